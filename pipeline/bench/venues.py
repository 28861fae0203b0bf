"""Feed a capture file through a venue module, no I/O: parse -> normalise -> book, for tests and
``marketprism bench collect``.

:func:`feed` drives a venue the way the runtime does (``connect`` lines call ``on_connect`` with a
plan named after the connection, ``ws_in`` lines ``on_frame``, ``rest`` lines ``on_rest`` with the
request rebuilt from the endpoint URL); :func:`replay_through_venue` times it.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import orjson

from pipeline.collectors.base import CollectorError, ConnectionPlan, FrameResult, RestRequest, Venue
from pipeline.collectors.capture import CaptureLine, read_capture
from pipeline.collectors.venues import VENUES
from pipeline.contracts import BookUpdate

logger = logging.getLogger(__name__)

HOSTS = {
    "stream.binance.com": "binance",
    "fstream.binance.com": "binance_usdm",
    "ws.okx.com": "okx",
    "advanced-trade-ws.coinbase.com": "coinbase",
    "ws.kraken.com": "kraken",
}


def exchange_of(url: str) -> str:
    """The venue id of a capture's websocket endpoint."""
    host = urlsplit(url).hostname or ""
    try:
        return HOSTS[host]
    except KeyError:
        raise ValueError(f"no venue serves {url!r}") from None


def plan_for(url: str, number: int) -> ConnectionPlan:
    """A plan standing for a captured connection (streams from a combined-stream URL)."""
    query = dict(parse_qsl(urlsplit(url).query))
    streams = tuple(query["streams"].split("/")) if "streams" in query else ()
    return ConnectionPlan(f"capture-{number}", url, (), (), streams)


def request_for(venue: Venue, url: str) -> RestRequest:
    """The request a captured REST body answers, rebuilt from its URL."""
    parts = urlsplit(url)
    params = tuple(parse_qsl(parts.query))
    raw = dict(params).get("symbol", "")
    kind = "snapshot" if parts.path.endswith("/depth") else "poll"
    base = f"{parts.scheme}://{parts.netloc}{parts.path}"
    symbol_of = getattr(venue, "symbol", None)
    symbol = symbol_of(raw) if raw and symbol_of else raw
    return RestRequest(kind=kind, symbol=symbol, url=base, params=params)


def feed(venue: Venue, lines: Iterable[CaptureLine]) -> Iterator[tuple[CaptureLine, FrameResult | CollectorError]]:
    """Each line with what the venue made of it: a result (for ``connect``, the snapshot requests of
    ``on_connect``) or the error it raised. REST bodies of polls the venue never makes are skipped."""
    plan: ConnectionPlan | None = None
    connections = 0
    polled = {request.url.rsplit("/", 1)[-1] for request, _ in venue.polls()}
    for line in lines:
        try:
            if line.kind == "connect":
                plan = plan_for(line.endpoint, connections)
                connections += 1
                yield line, FrameResult(requests=venue.on_connect(plan))
            elif line.kind == "ws_in":
                if plan is None:
                    raise ValueError("ws_in before any connect line")
                yield line, venue.on_frame(line.payload, line.ts_recv_us, plan)
            elif line.kind == "rest":
                request = request_for(venue, line.endpoint)
                if request.kind == "poll" and request.url.rsplit("/", 1)[-1] not in polled:
                    continue
                yield line, venue.on_rest(request, line.payload.encode(), line.ts_recv_us)
        except CollectorError as exc:
            yield line, exc


@dataclass
class ReplayStats:
    """What the passes over a capture produced and the CPU seconds they took (process time, so the
    figure is per core and robust to other processes on a shared machine)."""

    exchange: str
    frames: int = 0
    records: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    gaps: int = 0
    resyncs: int = 0
    checksum_failures: int = 0
    seconds: float = 0.0

    @property
    def events(self) -> int:
        return sum(self.records.values())

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0


def replay_through_venue(path: Path, repeat: int = 1) -> ReplayStats:
    """Parse, normalise and book every frame of a capture ``repeat`` times (fresh venue each time)."""
    lines = list(read_capture(path))
    first = next(line for line in lines if line.kind == "connect")
    exchange = exchange_of(first.endpoint)
    stats = ReplayStats(exchange)
    for _ in range(repeat):
        venue = VENUES[exchange](())
        started = time.process_time()
        for line, outcome in feed(venue, lines):
            if line.kind == "connect":
                continue
            stats.frames += 1
            if isinstance(outcome, CollectorError):
                stats.errors[type(outcome).__name__] += 1
                continue
            for record in outcome.records:
                stats.records[type(record).__name__] += 1
            stats.gaps += outcome.gaps
            stats.resyncs += outcome.resyncs
            stats.checksum_failures += outcome.checksum_failures
        stats.seconds += time.process_time() - started
    return stats


def json_only_baseline(path: Path, repeat: int = 1) -> float:
    """Frames per second of ``orjson.loads`` alone over the same ``ws_in``/``rest`` payloads (the
    floor any venue module pays), measured for a ratio next to :func:`replay_through_venue`."""
    payloads = [line.payload for line in read_capture(path) if line.kind in ("ws_in", "rest")]
    started = time.process_time()
    for _ in range(repeat):
        for payload in payloads:
            with contextlib.suppress(orjson.JSONDecodeError):
                orjson.loads(payload)
    return len(payloads) * repeat / (time.process_time() - started)


def book_levels(path: Path) -> int:
    """Price levels carried by the ``BookUpdate`` records of one pass over a capture (untimed): the
    per-level work behind the events of book-heavy captures."""
    lines = list(read_capture(path))
    venue = VENUES[exchange_of(next(line for line in lines if line.kind == "connect").endpoint)](())
    return sum(
        len(record.bids) + len(record.asks)
        for _, outcome in feed(venue, lines)
        if isinstance(outcome, FrameResult)
        for record in outcome.records
        if isinstance(record, BookUpdate)
    )


def main(argv: list[str] | None = None) -> None:
    """``python -m pipeline.bench.venues CAPTURE...``: per capture, the median of 5 passes
    (one core): events/s, frames/s, book levels/s, and the ``orjson``-only baseline."""
    paths = [Path(arg) for arg in (argv if argv is not None else sys.argv[1:])]
    for path in paths:
        runs = sorted((replay_through_venue(path) for _ in range(5)), key=lambda stats: stats.events_per_s)
        stats = runs[len(runs) // 2]
        frames_per_s = stats.frames / stats.seconds if stats.seconds else 0.0
        levels_per_s = book_levels(path) / stats.seconds if stats.seconds else 0.0
        print(
            f"{path.name:20} {stats.exchange:13} events/s {stats.events_per_s:>9,.0f}  frames/s {frames_per_s:>9,.0f}"
            f"  levels/s {levels_per_s:>11,.0f}  json-only frames/s {json_only_baseline(path, repeat=5):>10,.0f}"
            f"  gaps {stats.gaps}  checksum failures {stats.checksum_failures}  errors {sum(stats.errors.values())}"
        )


if __name__ == "__main__":
    main()
