"""An injected fault on one symbol resyncs that symbol only: one snapshot request (Binance) or one
resubscription (OKX, Kraken), while every other symbol's records are exactly those of a clean run."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from pipeline.bench.venues import feed
from pipeline.collectors.base import FrameResult
from pipeline.collectors.capture import CaptureLine, read_capture
from pipeline.contracts import BookUpdate

from .conftest import CAPTURES

pytestmark = pytest.mark.shared


def run(name: str, lines: list[CaptureLine]) -> tuple[Any, list[tuple[CaptureLine, Any]]]:
    cls, symbols = CAPTURES[name]
    venue = cls(symbols)
    return venue, list(feed(venue, lines))


def records_except(outcomes: list[tuple[CaptureLine, Any]], raw: str) -> list[Any]:
    return [r for _, o in outcomes if isinstance(o, FrameResult) for r in o.records if r.raw_symbol != raw]


def totals(outcomes: list[tuple[CaptureLine, Any]]) -> tuple[int, int, int, list[Any], list[str]]:
    results = [o for _, o in outcomes if isinstance(o, FrameResult)]
    return (
        sum(r.gaps for r in results),
        sum(r.resyncs for r in results),
        sum(r.checksum_failures for r in results),
        [q for r in results for q in r.requests if q.reason not in ("connect", "unsynced")],
        [f for r in results for f in r.resubscribe],
    )


def test_binance_gap_on_one_symbol_requests_one_snapshot(replay_dir: Path) -> None:
    lines = list(read_capture(replay_dir / "binance.txt"))
    _, clean = run("binance", lines)
    nkn = [i for i, line in enumerate(lines) if line.payload.startswith('{"stream":"nknusdt@depth')]
    cut = nkn[len(nkn) // 2]  # drop one NKNUSDT diff: the next one no longer chains
    venue, faulty = run("binance", [*lines[:cut], *lines[cut + 1 :]])
    gaps, resyncs, failures, requests, frames = totals(faulty)
    assert (gaps, resyncs, failures, frames) == (1, 1, 0, [])
    assert [(q.kind, q.symbol, dict(q.params)["symbol"], q.reason) for q in requests] == [
        ("snapshot", "NKN-USDT", "NKNUSDT", "gap")
    ]
    assert records_except(faulty, "NKNUSDT") == records_except(clean, "NKNUSDT")

    later = [json.loads(lines[i].payload)["data"] for i in nkn if i > cut]
    snapshot = json.dumps(
        {"lastUpdateId": later[0]["U"] - 1, "bids": [["0.35", "1.00000000"]], "asks": [["0.36", "1.00000000"]]}
    ).encode()
    healed = venue.on_rest(requests[0], snapshot, lines[-1].ts_recv_us)
    books = [r for r in healed.records if isinstance(r, BookUpdate)]
    assert books[0].kind == "snapshot" and books[0].resync is True and books[0].symbol == "NKN-USDT"
    assert [b.seq_first for b in books[1:]] == [d["U"] for d in later]
    assert healed.gaps == 0 and healed.requests == []


def corrupt(lines: list[CaptureLine], index: int, edit: Callable[[Any], None]) -> list[CaptureLine]:
    message = json.loads(lines[index].payload)
    edit(message)
    return [
        *lines[:index],
        replace(lines[index], payload=json.dumps(message, separators=(",", ":"))),
        *lines[index + 1 :],
    ]


def test_okx_checksum_failure_resubscribes_one_instrument(replay_dir: Path) -> None:
    lines = list(read_capture(replay_dir / "okx.txt"))
    _, clean = run("okx", lines)
    books = [
        i
        for i, line in enumerate(lines)
        if '"channel":"books","instId":"BTC-USDT"}' in line.payload and '"action":"update"' in line.payload
    ]
    target = books[len(books) // 2]

    def bad_checksum(m: Any) -> None:
        m["data"][0]["checksum"] += 1

    _, faulty = run("okx", corrupt(lines, target, bad_checksum))
    gaps, resyncs, failures, requests, frames = totals(faulty)
    assert (gaps, resyncs, failures, requests) == (0, 1, 1, [])
    assert [json.loads(f) for f in frames] == [
        {"op": "unsubscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
        {"op": "subscribe", "args": [{"channel": "books", "instId": "BTC-USDT"}]},
    ]
    assert records_except(faulty, "BTC-USDT") == records_except(clean, "BTC-USDT")


def test_kraken_checksum_failure_resubscribes_one_pair(replay_dir: Path) -> None:
    lines = list(read_capture(replay_dir / "kraken.txt"))
    _, clean = run("kraken", lines)
    updates = [
        i for i, line in enumerate(lines) if line.payload.endswith('"book-1000","SC/EUR"]') and '"c":"' in line.payload
    ]
    target = updates[len(updates) // 2]

    def bad_checksum(m: Any) -> None:
        m[-3]["c"] = str((int(m[-3]["c"]) + 1) % 2**32)

    _, faulty = run("kraken", corrupt(lines, target, bad_checksum))
    gaps, resyncs, failures, requests, frames = totals(faulty)
    assert (gaps, resyncs, failures, requests) == (0, 1, 1, [])
    assert [json.loads(f) for f in frames] == [
        {"event": "unsubscribe", "pair": ["SC/EUR"], "subscription": {"name": "book", "depth": 1000}},
        {"event": "subscribe", "pair": ["SC/EUR"], "subscription": {"name": "book", "depth": 1000}},
    ]
    assert records_except(faulty, "SC/EUR") == records_except(clean, "SC/EUR")
