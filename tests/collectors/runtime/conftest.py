"""Helpers of the runtime tests (as fixtures: the suite imports test modules in importlib mode).

``toy``: a small venue (the runtime knows no venue, so any module will do) with frames
``{"op": "ack"}``, ``{"op": "trade", "s": .., "id": .., "p": .., "q": .., "side": .., "ts": ..}``,
``{"op": "snap", "s": ..}`` (asks for a REST snapshot), ``{"op": "reject"}`` (a subscription error),
``{"op": "gap"}`` (a book gap resynced by resubscribing);
anything else is a FrameError. Tests write such frames into temporary capture files.
``run_collector``: a collector running in-process until the context exits; ``read_topic``: every
record of a topic back from the broker.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from pipeline.collectors.base import (
    ConnectionPlan,
    FrameError,
    FrameResult,
    KeepAlive,
    RateLimit,
    RestRequest,
    SubscriptionError,
    Venue,
)
from pipeline.collectors.capture import CaptureLine
from pipeline.collectors.output import Output
from pipeline.collectors.runtime import Collector
from pipeline.contracts import Bbo, Trade, decode
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import Settings
from tests.conftest import read_to_end


async def read_topic(settings: Settings, name: str, record_type: type[Any]) -> list[tuple[bytes, Any]]:
    """Every (key, record) of a topic, partition by partition, in offset order."""
    return [(m.key, decode(record_type, m.value)) for m in await read_to_end(settings, name)]


async def wait_for(condition: Callable[[], bool], limit_s: float = 120.0) -> None:
    """Poll ``condition`` (state of in-process parts) until it holds; fail after ``limit_s``."""
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 - polling plain attributes of running parts
            await asyncio.sleep(0.05)


class RunningCollector:
    def __init__(self, settings: Settings, venues: list[Venue], queue_size: int = 100_000, **options: Any):
        self.output = Output(make_record_producer(settings.kafka, settings.topic_prefix), queue_size)
        self.collector = Collector(settings, venues, self.output, **options)
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> RunningCollector:
        self.task = asyncio.create_task(self.collector.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        async with asyncio.timeout(120):
            await self.task


TOY_WS = "wss://toy.example:443/ws"
TOY_REST = "https://api.toy.example"
T0 = 1_700_000_000_000_000


class ToyVenue(Venue):
    exchange = "kraken"
    ws_url = TOY_WS
    rest_url = TOY_REST
    keepalive = KeepAlive(ping_frame='{"op":"ping"}', interval_s=5.0, pong_timeout_s=10.0)
    rest_limit = RateLimit(weight=50, period_s=1.0)

    def __init__(self, symbols, ws_url=None, rest_url=None):  # type: ignore[no-untyped-def]
        super().__init__(symbols, ws_url, rest_url)
        self.connects = 0

    def plan(self) -> list[ConnectionPlan]:
        sub = json.dumps({"op": "subscribe", "symbols": list(self.symbols)})
        return [ConnectionPlan("toy-0", self.ws_base, (sub,), self.symbols, ("trades",))]

    def on_connect(self, plan: ConnectionPlan) -> list[RestRequest]:
        self.connects += 1
        return []

    def on_frame(self, raw: str | bytes, ts_recv: int, plan: ConnectionPlan) -> FrameResult:
        try:
            msg = json.loads(raw)
        except ValueError as exc:
            raise FrameError("bad_json", str(exc)) from None
        if not isinstance(msg, dict):
            raise FrameError("bad_type", "not an object")
        op = msg.get("op")
        if op == "ack":
            return FrameResult(control="ack")
        if op == "reject":
            raise SubscriptionError(str(raw))
        if op == "gap":  # a broken book: resync it by resubscribing on this connection
            return FrameResult(stream="book", gaps=1, resyncs=1, resubscribe=['{"op":"unsub"}', '{"op":"sub"}'])
        if op == "snap":
            url = f"{self.rest_base}/depth"
            return FrameResult(requests=[RestRequest("snapshot", msg["s"], url, (("symbol", msg["s"]),), 5)])
        if op != "trade":
            raise FrameError("unknown_channel", f"unknown op {op!r}")
        try:
            trade = Trade(
                exchange="kraken",
                symbol=msg["s"],
                raw_symbol=msg["s"],
                trade_id=str(msg["id"]),
                price=msg["p"],
                size=msg["q"],
                side=msg["side"],
                ts_event=msg["ts"],
                ts_recv=ts_recv,
            )
        except KeyError as exc:
            raise FrameError("missing_field", f"missing {exc}") from None
        return FrameResult(records=[trade], stream="trades")

    def on_rest(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult:
        msg = json.loads(body)
        bbo = Bbo(
            exchange="kraken",
            symbol=request.symbol,
            raw_symbol=request.symbol,
            bid_price=msg["b"],
            bid_size="1",
            ask_price=msg["a"],
            ask_size="1",
            ts_event=T0,
            ts_recv=ts_recv,
        )
        return FrameResult(records=[bbo], stream="book")


def trade_frame(n: int, symbol: str = "BTC-USD") -> str:
    return json.dumps(
        {
            "op": "trade",
            "s": symbol,
            "id": str(n),
            "p": f"100.{n:04d}0",
            "q": f"0.{n:03d}",
            "side": "buy" if n % 2 else "sell",
            "ts": T0 + n,
        }
    )


def write_capture(path: Path, frames: list[str], rest: dict[str, str] | None = None) -> Path:
    lines = [
        CaptureLine(T0, "connect", TOY_WS, ""),
        CaptureLine(T0 + 1, "ws_out", TOY_WS, '{"op":"subscribe"}'),
        CaptureLine(T0 + 2, "ws_in", "-", '{"op":"ack"}'),
    ]
    for url, body in (rest or {}).items():
        lines.append(CaptureLine(T0 + 3, "rest", url, body))
    lines += [CaptureLine(T0 + 10 + i, "ws_in", "-", frame) for i, frame in enumerate(frames)]
    path.write_text("".join(line.to_line() for line in lines))
    return path


@pytest.fixture
def toy() -> SimpleNamespace:
    return SimpleNamespace(
        TOY_WS=TOY_WS,
        T0=T0,
        ToyVenue=ToyVenue,
        trade_frame=trade_frame,
        write_capture=write_capture,
        read_topic=read_topic,
        wait_for=wait_for,
    )


@pytest.fixture
def run_collector() -> Callable[..., RunningCollector]:
    return RunningCollector


@pytest.fixture
def eventually() -> Callable[..., Awaitable[None]]:
    return wait_for
