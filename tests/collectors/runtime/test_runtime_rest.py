"""The REST client against a real local HTTP server: weights under the budget, coalescing, 429 retry."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from pipeline.backoff import Backoff
from pipeline.collectors.base import RateLimit, RestRequest
from pipeline.collectors.rest import RestClient


class Server:
    def __init__(self, fail_first: int = 0) -> None:
        self.hits: list[tuple[float, str]] = []
        self.fail_first = fail_first

    async def handle(self, request: web.Request) -> web.Response:
        self.hits.append((time.monotonic(), request.query.get("symbol", "")))
        if self.fail_first > 0:
            self.fail_first -= 1
            return web.Response(status=429, headers={"Retry-After": "0"})
        return web.json_response({"symbol": request.query.get("symbol")})

    async def __aenter__(self) -> str:
        app = web.Application()
        app.router.add_get("/depth", self.handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]

    async def __aexit__(self, *exc: object) -> None:
        await self.runner.cleanup()


async def _run_until(client: RestClient, done: asyncio.Event) -> None:
    task = asyncio.create_task(client.run())
    try:
        async with asyncio.timeout(120):
            await done.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_snapshot_storm_stays_within_the_weight_budget() -> None:
    """40 snapshot requests of weight 10 under a budget of 100 per second: spread over the budget
    instead of a burst, and every one answered once (duplicates coalesced)."""
    server = Server()
    bodies: list[str] = []
    done = asyncio.Event()

    def on_body(request: RestRequest, body: bytes, ts_recv: int) -> None:
        bodies.append(request.symbol)
        if len(bodies) == 40:
            done.set()

    async with server as base:
        client = RestClient("kraken", RateLimit(weight=100, period_s=1.0), on_body, concurrency=8)
        requests = [
            RestRequest("snapshot", f"S{n}", f"{base}/depth", (("symbol", f"S{n}"),), weight=10) for n in range(40)
        ]
        client.submit(requests)
        client.submit(requests[:10])  # already waiting: coalesced, not sent twice
        await _run_until(client, done)

    assert sorted(bodies) == sorted(f"S{n}" for n in range(40))
    # The leaky bucket lets through at most its capacity plus one period's refill in any one second;
    # up to `concurrency` requests delayed in flight may land late and bunch with the next ones.
    # Without the limiter all 400 units would arrive at once.
    times = [t for t, _ in server.hits]
    for start in times:
        in_window = sum(1 for t in times if start <= t < start + 1.0)
        assert in_window * 10 <= 2 * 100 + 8 * 10, f"{in_window} requests of weight 10 within one second"


async def test_429_waits_and_retries() -> None:
    server = Server(fail_first=2)
    done = asyncio.Event()
    got: list[bytes] = []

    def on_body(request: RestRequest, body: bytes, ts_recv: int) -> None:
        got.append(body)
        done.set()

    async with server as base:
        client = RestClient("kraken", RateLimit(weight=10, period_s=1.0), on_body, backoff=lambda: Backoff(0.01, 0.05))
        client.submit([RestRequest("snapshot", "X", f"{base}/depth", (("symbol", "X"),))])
        await _run_until(client, done)
    assert got == [b'{"symbol": "X"}']
    assert len(server.hits) == 3
    assert client.completed == 1 and client.failed == 0
