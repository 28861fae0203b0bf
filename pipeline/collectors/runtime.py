"""The collector runtime: venues from settings wired to connections, REST, dedup, metrics and Kafka.

One :class:`VenueRuntime` per venue is the :class:`~pipeline.collectors.connection.FrameSink` of
that venue's connections: each frame goes to the venue module (pure protocol), trades pass the
dedup, records go to the bounded :class:`~pipeline.collectors.output.Output`, REST requests to the
venue's :class:`~pipeline.collectors.rest.RestClient`, and frames the venue cannot process go to
``ops.dlq.v1`` with their reason while the collector keeps running. :class:`Collector` runs every
venue plus the producer pump and the per-second ``FeedMetrics`` emitter in one TaskGroup.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from functools import cache
from typing import Any

import msgspec

from pipeline.backoff import Backoff
from pipeline.clock import Clock, SystemClock
from pipeline.collectors.base import (
    ConnectionPlan,
    FrameError,
    FrameResult,
    RestRequest,
    SubscriptionError,
    Venue,
)
from pipeline.collectors.connection import ConnectionSupervisor
from pipeline.collectors.dedup import TradeDedup
from pipeline.collectors.metrics import BOOK_LOCAL_RESYNCS, DUPLICATES, FeedStats
from pipeline.collectors.output import Output
from pipeline.collectors.rest import RestClient
from pipeline.contracts import BookUpdate, DecodeError, Record, Trade, decoder_for, encode
from pipeline.contracts.records import Level
from pipeline.settings import LimitSettings, Settings

log = logging.getLogger(__name__)

STREAM_OF = {
    "Trade": "trades",
    "BookUpdate": "book",
    "Bbo": "bbo",
    "Funding": "funding",
    "OpenInterest": "open_interest",
    "Liquidation": "liquidations",
}


@cache
def checker_for(record_type: type[Record]) -> msgspec.json.Decoder[Any]:
    """The decoder that checks a record the runtime is about to publish: every field constraint of its
    contract, except the pattern of each price level's strings. Venue modules check each level on input
    (:func:`~pipeline.collectors.venues._common.levels`, the contract's decimal pattern) and republish
    stored levels only, and the fuzz and capture tests hold every record they make to the full contract;
    re-matching every level of the books here was ~3/4 of the validation time."""
    if record_type is not BookUpdate:
        return decoder_for(record_type)
    fields = [
        (f.name, list[tuple[str, str]] if f.type == list[Level] else f.type)
        if f.required
        else (f.name, list[tuple[str, str]] if f.type == list[Level] else f.type, f.default)
        for f in msgspec.structs.fields(record_type)
    ]
    return msgspec.json.Decoder(msgspec.defstruct(f"{record_type.__name__}Check", fields, kw_only=True))


def local_snapshot(venue: Venue, symbol: str, ts_recv: int) -> BookUpdate | None:
    """A ``resync`` snapshot of the collector's own, synced book of ``symbol`` (None when the venue module keeps
    no such book or it is not synced). ``ts_event`` is ``ts_recv``: the book is as of the last change applied."""
    books = getattr(venue, "_books", None)
    if not isinstance(books, dict):
        return None
    for state in books.values():
        if getattr(state, "symbol", None) == symbol and getattr(state, "synced", False):
            bids, asks = state.book.levels()
            return BookUpdate(
                exchange=venue.exchange,  # type: ignore[arg-type]
                symbol=symbol,
                raw_symbol=state.raw,
                kind="snapshot",
                bids=bids,
                asks=asks,
                ts_event=ts_recv,
                ts_recv=ts_recv,
                seq_first=state.seq,
                seq_last=state.seq,
                resync=True,
            )
    return None


class VenueRuntime:
    def __init__(
        self,
        venue: Venue,
        output: Output,
        *,
        proxy: str | None = None,
        backoff: Callable[[], Backoff] = Backoff,
        rest_concurrency: int = 4,
        dedup_capacity: int = 20_000,
        ack_timeout_s: float = 15.0,
        clock: Clock | None = None,
        limits: LimitSettings | None = None,
    ):
        limits = limits or LimitSettings()
        self.venue = venue
        self.exchange = venue.exchange
        self.clock = clock or SystemClock()  # pipeline time: receipt stamps and the feed-metrics cadence
        self.output = output
        self.stats = FeedStats(venue.exchange)
        self.dedup = TradeDedup(dedup_capacity)
        self.rest = RestClient(
            venue.exchange,
            venue.rest_limit,
            self.rest_body,
            proxy=proxy,
            concurrency=rest_concurrency,
            wall_us=self.clock.now_us,
            max_body_bytes=limits.rest_max_body_bytes,
            retry_after_max_s=limits.retry_after_max_s,
        )
        self.plans = venue.plan()
        self.connections = [
            ConnectionSupervisor(
                plan,
                venue.keepalive,
                self,
                proxy=proxy,
                backoff=backoff(),
                max_frame_bytes=limits.ws_max_frame_bytes,
                ack_timeout_s=ack_timeout_s,
                ts_recv=self.clock.now_us,
            )
            for plan in self.plans
        ]
        for plan in self.plans:
            self.stats.plan(plan)
        self.dead_letters = 0
        self.duplicates = DUPLICATES.labels(venue.exchange)
        self._kinds: dict[type, tuple[Callable[[bytes], Any], str]] = {}  # record type -> (its check, lag stream)

    # ---- FrameSink

    def connected(self, plan: ConnectionPlan) -> None:
        self.stats.connection(plan, True)
        try:
            requests = self.venue.on_connect(plan)
        except Exception:  # a venue bug must not take the connection down with it
            log.exception("%s: venue module failed on connect of %s", self.exchange, plan.name)
            return
        self.rest.submit(requests)

    def disconnected(self, plan: ConnectionPlan, reason: str) -> None:
        self.stats.connection(plan, False, reason.split(":")[0])

    def frame(self, plan: ConnectionPlan, raw: str | bytes, ts_recv: int) -> FrameResult | None:
        try:
            result = self.venue.on_frame(raw, ts_recv, plan)
        except FrameError as exc:
            self._dead(plan.name, exc.reason, str(exc), raw)
            self.stats.frame(plan, len(raw), None, ts_recv)
            return None
        except SubscriptionError as exc:
            self._dead(plan.name, "subscription", str(exc), raw)
            self.stats.frame(plan, len(raw), None, ts_recv)
            return None
        except Exception as exc:  # a venue bug on an odd frame must not stop the feed: DLQ it, loudly
            log.exception("%s: venue module failed on a frame", self.exchange)
            self._dead(plan.name, "venue_error", f"{type(exc).__name__}: {exc}", raw)
            self.stats.frame(plan, len(raw), None, ts_recv)
            return None
        self.stats.frame(plan, len(raw), result, ts_recv)
        self._publish(result, ts_recv)
        return result

    # ---- REST bodies

    def rest_body(self, request: RestRequest, body: bytes, ts_recv: int) -> FrameResult | None:
        """The body of a REST request the venue asked for (called by the REST client)."""
        try:
            result = self.venue.on_rest(request, body, ts_recv)
        except FrameError as exc:
            self._dead(f"rest:{request.kind}", exc.reason, str(exc), body)
            return None
        except Exception as exc:  # same policy as frames
            log.exception("%s: venue module failed on a REST body", self.exchange)
            self._dead(f"rest:{request.kind}", "venue_error", f"{type(exc).__name__}: {exc}", body)
            return None
        self.stats.result(result.stream or "book", result)
        self._publish(result, ts_recv)
        return result

    def _dead(self, where: str, reason: str, error: str, payload: str | bytes) -> None:
        self.dead_letters += 1
        self.stats.parse_error(where, reason)
        self.output.dead(reason, f"{self.exchange} {where}: {error}", payload, self.exchange)

    def _publish(self, result: FrameResult, ts_recv: int) -> None:
        lag, record_out, kinds = self.stats.lag, self.output.record, self._kinds
        dropped = 0
        for record in result.records:
            value = encode(record)
            kind = type(record)
            known = kinds.get(kind)
            if known is None:
                known = kinds[kind] = (checker_for(kind).decode, STREAM_OF.get(kind.__name__, "other"))
            try:  # msgspec checks constraints on decode only: a venue bug must not reach the topic
                known[0](value)
            except DecodeError as exc:
                self._dead("records", "schema", f"{kind.__name__}: {exc}", value)
                continue
            if kind is Trade and not self.dedup.first_time(record):  # type: ignore[arg-type]
                self.duplicates.inc()
                continue
            lag(known[1], record.ts_recv - record.ts_event)  # type: ignore[attr-defined]
            if not record_out(record, value):
                dropped += 1
        if dropped:  # not published: a gap of the stream in its feed metrics (the overflow counter has the kind)
            self.stats.result(result.stream or "other", FrameResult(gaps=dropped))
        if self.output.broken_books:
            self._repair_books(result.stream or "book", ts_recv)
        if result.requests:
            self.rest.submit(result.requests)

    def _repair_books(self, stream: str, ts_recv: int) -> None:
        """Publish a snapshot of each broken book of this venue from the collector's own book (synced ones: a
        book still waiting for the venue's snapshot gets that one); it stays broken while the queue is full."""
        for exchange, symbol in list(self.output.broken_books):
            if exchange != self.exchange or not self.output.has_room:
                continue
            snapshot = local_snapshot(self.venue, symbol, ts_recv)
            if snapshot is not None and self.output.record(snapshot):
                BOOK_LOCAL_RESYNCS.labels(exchange).inc()
                self.stats.result(stream, FrameResult(resyncs=1))
                log.info("%s %s: broken book repaired with a snapshot of the collector's book", exchange, symbol)

    # ---- run

    async def run(self, metrics_interval_s: float = 1.0) -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(self.rest.run(self.venue.polls()))
            for connection in self.connections:
                group.create_task(connection.run())
            group.create_task(self._emit_metrics(metrics_interval_s))

    async def _emit_metrics(self, interval_s: float) -> None:
        """One FeedMetrics record per stream per interval; on shutdown, one more for the partial interval."""
        interval_us = int(interval_s * 1e6)
        started = self.clock.now_us()
        try:
            while True:
                await self.clock.sleep(interval_s)
                started = self.clock.now_us()
                for record in self.stats.flush(started, interval_us):
                    self.output.metric(record)
        except asyncio.CancelledError:
            now = self.clock.now_us()
            for record in self.stats.flush(now, max(1, now - started)):
                self.output.metric(record)
            raise


def build_venues(settings: Settings, only: list[str] | None = None) -> list[Venue]:
    """Venue modules for the enabled (or the named) venues, with their endpoint overrides."""
    from pipeline.collectors.venues import VENUES

    venues = []
    for name, conf in settings.venues.items():
        if (only and name not in only) or (not only and not conf.enabled):
            continue
        if name not in VENUES:
            raise ValueError(f"venue {name!r} has no module yet (known: {sorted(VENUES)})")
        venues.append(VENUES[name](conf.symbols, ws_url=conf.ws_url, rest_url=conf.rest_url))
    return venues


class Collector:
    """Every configured venue, the producer pump and the feed-metrics emitters of one process."""

    def __init__(self, settings: Settings, venues: list[Venue], output: Output, **runtime_options: object):
        self.output = output
        self.runtimes = [
            VenueRuntime(
                venue,
                output,
                proxy=settings.venues[venue.exchange].proxy if venue.exchange in settings.venues else None,
                **({"limits": settings.limits} | runtime_options),  # type: ignore[arg-type]
            )
            for venue in venues
        ]

    async def run(self, stop: asyncio.Event | None = None, drain_timeout_s: float = 30.0) -> None:
        """Run until ``stop`` is set (then drain the queue and flush) or until cancelled."""
        stop = stop or asyncio.Event()
        try:
            async with asyncio.TaskGroup() as group:
                pump = group.create_task(self.output.run())
                feeds = [group.create_task(runtime.run()) for runtime in self.runtimes]
                await stop.wait()
                for feed in feeds:
                    feed.cancel()
                await asyncio.wait(feeds)
                try:
                    async with asyncio.timeout(drain_timeout_s):
                        await self.output.drain()
                except TimeoutError:
                    log.error("shutdown: %d item(s) not produced within %gs", self.output.pending, drain_timeout_s)
                pump.cancel()
        finally:
            await self.output.stop()

    @property
    def frames(self) -> int:
        return sum(r.stats.frames for r in self.runtimes)
