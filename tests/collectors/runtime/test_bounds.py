"""Bounded inputs a venue (or whoever stands in its place) controls, each from its setting (``limits``): a websocket
frame above ``ws_max_frame_bytes`` closes the connection (after permessage-deflate, so a compressed bomb is caught
too); a REST body above ``rest_max_body_bytes`` after gzip decompression is cut off; ``Retry-After`` is capped at
``retry_after_max_s``. All against real local servers."""

from __future__ import annotations

import asyncio
import gzip
import zlib
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from websockets.asyncio.server import ServerConnection, serve

from pipeline.backoff import Backoff
from pipeline.collectors.base import ConnectionPlan, FrameResult, KeepAlive, RateLimit, RestRequest
from pipeline.collectors.connection import ConnectionSupervisor
from pipeline.collectors.metrics import REST_REQUESTS
from pipeline.collectors.rest import RestClient
from pipeline.settings import LimitSettings, Settings

LIMIT = 64 * 1024


def test_limits_are_settings_with_bounded_defaults() -> None:
    limits = Settings(metrics_port=0).limits
    assert limits == LimitSettings()
    assert limits.ws_max_frame_bytes == 16 * 1024 * 1024 and limits.rest_max_body_bytes == 32 * 1024 * 1024
    assert limits.retry_after_max_s == 60.0
    assert Settings(metrics_port=0, limits={"ws_max_frame_bytes": LIMIT}).limits.ws_max_frame_bytes == LIMIT


class Frames:
    def __init__(self) -> None:
        self.frames: list[int] = []
        self.reasons: list[str] = []
        self.two_sessions = asyncio.Event()

    def connected(self, plan: ConnectionPlan) -> None:
        return None

    def frame(self, plan: ConnectionPlan, raw: str | bytes, ts_recv: int) -> FrameResult | None:
        self.frames.append(len(raw))
        return None

    def disconnected(self, plan: ConnectionPlan, reason: str) -> None:
        self.reasons.append(reason)
        if len(self.reasons) >= 2:
            self.two_sessions.set()


@pytest.fixture
async def bomb_server() -> AsyncIterator[str]:
    """Sends a small frame, then one that inflates (permessage-deflate) far beyond the limit from a few KiB."""

    async def handler(ws: ServerConnection) -> None:
        await ws.send("x" * 100)
        await ws.send("0" * (LIMIT * 64))  # ~4 MiB of zeros: a few KiB on the wire, compressed
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression="deflate", max_size=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/"


async def test_a_websocket_frame_above_the_limit_closes_the_connection_and_it_reconnects(bomb_server: str) -> None:
    sink = Frames()
    plan = ConnectionPlan("bomb-0", bomb_server, (), ("X",), ("trades",))
    supervisor = ConnectionSupervisor(
        plan,
        KeepAlive(ping_frame=None, interval_s=30.0, pong_timeout_s=30.0),
        sink,
        max_frame_bytes=LIMIT,
        backoff=Backoff(0.01, 0.05),
    )
    task = asyncio.create_task(supervisor.run())
    try:
        async with asyncio.timeout(60):
            await sink.two_sessions.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert sink.frames.count(100) >= 2  # the small frame of each session arrived
    assert all(size <= LIMIT for size in sink.frames)  # the big one never reached the venue module
    assert all("1009" in reason or "too big" in reason for reason in sink.reasons), sink.reasons


class Answers:
    """``/bomb``: a gzip body that inflates to 16x the limit; ``/slow``: 429 with a day-long Retry-After, then OK."""

    def __init__(self) -> None:
        self.slow_hits = 0

    async def bomb(self, request: web.Request) -> web.Response:
        body = gzip.compress(b"0" * (LIMIT * 16))
        return web.Response(body=body, headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})

    async def slow(self, request: web.Request) -> web.Response:
        self.slow_hits += 1
        if self.slow_hits == 1:
            return web.Response(status=429, headers={"Retry-After": "86400"})
        return web.json_response({"ok": True})


@pytest.fixture
async def answers() -> AsyncIterator[tuple[str, Answers]]:
    state = Answers()
    app = web.Application()
    app.router.add_get("/bomb", state.bomb)
    app.router.add_get("/slow", state.slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}", state  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def test_a_rest_body_that_inflates_beyond_the_limit_is_cut_off(answers: tuple[str, Answers]) -> None:
    base, _ = answers
    bodies: list[bytes] = []
    before = REST_REQUESTS.labels("kraken", "snapshot", "too_large")._value.get()
    client = RestClient(
        "kraken", RateLimit(weight=10, period_s=1.0), lambda r, b, t: bodies.append(b), max_body_bytes=LIMIT
    )
    client.submit([RestRequest("snapshot", "X", f"{base}/bomb", ())])
    task = asyncio.create_task(client.run())
    try:
        async with asyncio.timeout(60):
            await client.settle()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert bodies == [] and client.failed == 1
    assert REST_REQUESTS.labels("kraken", "snapshot", "too_large")._value.get() == before + 1
    assert (
        len(zlib.compress(b"0" * (LIMIT * 16))) < LIMIT
    )  # what crossed the wire was small: the bound is on the inflated body


async def test_retry_after_is_capped(answers: tuple[str, Answers]) -> None:
    base, state = answers
    slept: list[float] = []
    bodies: list[bytes] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    client = RestClient(
        "kraken",
        RateLimit(weight=10, period_s=1.0),
        lambda r, b, t: bodies.append(b),
        retry_after_max_s=5.0,
        sleep=sleep,
    )
    client.submit([RestRequest("snapshot", "X", f"{base}/slow", ())])
    task = asyncio.create_task(client.run())
    try:
        async with asyncio.timeout(60):
            await client.settle()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    assert slept == [5.0] and bodies == [b'{"ok": true}'] and state.slow_hits == 2
