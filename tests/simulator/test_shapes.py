"""Frame shapes against the real captures in ../shared/replay (and the documented v2/2026 shapes
where no capture exists): the simulator sends at least every field the venue sent, and any extra
field is one the venue documents for the newer API (OKX ``seqId``/``prevSeqId``, trade ``count``,
ack ``connId``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.simulator.base import SEQ
from pipeline.simulator.engine import Engine
from pipeline.simulator.protocols import Connection
from pipeline.simulator.scenario import load_scenario

pytestmark = pytest.mark.shared

DOCUMENTED_EXTRAS = {"seqId", "prevSeqId", "count", "connId"}


def captured(replay_dir: Path, name: str, needle: str) -> Any:
    with (replay_dir / name).open() as lines:
        for line in lines:
            _, kind, _, payload = line.rstrip("\n").split("\t", 3)
            if kind in ("ws_in", "rest") and needle in payload:
                return json.loads(payload)
    raise AssertionError(f"{needle!r} not in {name}")


@pytest.fixture(scope="module")
def ours() -> dict[str, Any]:
    """The first frame of each key of a short default run, parsed, by ``venue/key-channel``."""
    engine = Engine(load_scenario(duration_s=12))
    found: dict[str, Any] = {}
    for frame in engine.run():
        if frame.kind == "data":
            text = frame.text.replace(SEQ, "1")
            found.setdefault(f"{frame.venue}/{frame.key.partition('|')[0]}", json.loads(text))
    for venue, proto in engine.protocols.items():
        found[f"{venue}/proto"] = proto
    return found


def same_fields(capture: dict[str, Any], sim: dict[str, Any]) -> None:
    assert set(capture) <= set(sim), set(capture) - set(sim)
    assert set(sim) - set(capture) <= DOCUMENTED_EXTRAS, set(sim) - set(capture)
    for key, value in capture.items():
        assert type(sim[key]) is type(value), key


@pytest.mark.parametrize(("name", "venue"), [("binance.txt", "binance"), ("binance_futures.txt", "binance_usdm")])
def test_binance(replay_dir: Path, ours: dict[str, Any], name: str, venue: str) -> None:
    for needle, key in (('"e":"depthUpdate"', "depth"), ('"e":"aggTrade"', "aggTrade"), ("@bookTicker", "bookTicker")):
        capture = captured(replay_dir, name, needle)["data"]
        same_fields(capture, ours[f"{venue}/{key}"])
    rest = captured(replay_dir, name, '"lastUpdateId"')
    proto = ours[f"{venue}/proto"]
    raw = next(iter(proto.markets))
    status, body = proto.rest(proto.depth_path, {"symbol": raw, "limit": "1000"}, 0)
    assert status == 200
    same_fields(rest, json.loads(body))


def test_okx(replay_dir: Path, ours: dict[str, Any]) -> None:
    update = captured(replay_dir, "okx.txt", '"action":"update"')
    sim = ours["okx/books"]
    same_fields({k: v for k, v in update.items() if k != "data"}, {k: v for k, v in sim.items() if k != "data"})
    same_fields(update["data"][0], sim["data"][0])
    assert len(sim["data"][0]["asks"][0]) == len(update["data"][0]["asks"][0]) == 4
    for needle, key in (('"channel":"trades","instId":"BTC-USDT"},"data"', "trades"),
                        ('"channel":"tickers","instId":"BTC-USDT"},"data"', "tickers")):  # fmt: skip
        same_fields(captured(replay_dir, "okx.txt", needle)["data"][0], ours[f"okx/{key}"]["data"][0])
    proto = ours["okx/proto"]
    conn = Connection(1)
    proto.open(conn, {}, 0)
    ack, snapshot = proto.message(conn, '{"op":"subscribe","args":[{"channel":"books","instId":"BTC-USDT"}]}', 0)
    same_fields(captured(replay_dir, "okx.txt", '"event":"subscribe"'), json.loads(ack))
    snap = json.loads(snapshot)
    assert snap["action"] == "snapshot" and snap["data"][0]["prevSeqId"] == -1
    assert proto.message(conn, "ping", 0) == ["pong"]


@pytest.mark.parametrize("channel", ["l2_data", "market_trades", "ticker", "heartbeats"])
def test_coinbase(replay_dir: Path, ours: dict[str, Any], channel: str) -> None:
    capture = captured(replay_dir, "coinbase.txt", f'"channel":"{channel}"')
    key = {"l2_data": "level2"}.get(channel, channel)
    sim = ours[f"coinbase/{key}"]
    same_fields({k: v for k, v in capture.items() if k != "events"}, {k: v for k, v in sim.items() if k != "events"})
    if channel == "l2_data":
        same_fields(capture["events"][0]["updates"][0], sim["events"][0]["updates"][0])
    elif channel == "market_trades":
        same_fields(capture["events"][0]["trades"][0], sim["events"][0]["trades"][0])
    elif channel == "ticker":
        same_fields(capture["events"][0]["tickers"][0], sim["events"][0]["tickers"][0])
    else:
        same_fields(capture["events"][0], sim["events"][0])


def test_kraken_v2_documented_shapes(ours: dict[str, Any]) -> None:
    """No v2 capture exists: the fields of docs.kraken.com's v2 book/trade/ticker examples."""
    book = ours["kraken/book"]
    assert (book["channel"], book["type"]) == ("book", "update")
    assert set(book["data"][0]) == {"symbol", "bids", "asks", "checksum", "timestamp"}
    trade = ours["kraken/trade"]["data"][0]
    assert set(trade) == {"symbol", "side", "price", "qty", "ord_type", "trade_id", "timestamp"}
    ticker = ours["kraken/ticker"]["data"][0]
    assert set(ticker) >= {"symbol", "bid", "bid_qty", "ask", "ask_qty", "last", "volume", "vwap", "low", "high"}
    proto = ours["kraken/proto"]
    conn = Connection(1)
    status = json.loads(proto.open(conn, {}, 0)[0])
    assert status["channel"] == "status" and status["data"][0]["api_version"] == "v2"
    pong = json.loads(proto.message(conn, '{"method":"ping","req_id":7}', 0)[0])
    assert pong["method"] == "pong" and pong["req_id"] == 7
