"""Cross-venue reference price per asset: the median of the venues' mids, with each venue's divergence.

Assets are spot symbols grouped by base and quote, with USD, USDT and USDC counted as one ``USD``
quote (``binance:BTC-USDT`` and ``coinbase:BTC-USD`` both price ``BTC-USD``); perpetuals are left
out (their basis is not a price disagreement).

The aggregation workers ship each market's mid per second of the BBO's ``ts_recv`` (a :class:`MidPartial`;
the collectors' receipt time on the shared pipeline clock), every tick. Partitions progress unevenly
under load, so at any moment the venues' latest mids stand at different times; references are an
**as-of join** in event time, not a snapshot of whatever arrived last:

- a venue is **live** while its mids keep arriving (one within ``stale_after_us`` of pipeline time) and
  its latest mid trails the asset's newest by at most ``max_trail_us``; otherwise it is ``stale`` (its
  feed stopped). A venue is never judged stale because our own processing of it lags: while its bar
  worker reports its partition behind with unread BBOs (a :class:`BacklogPartial`, within ``stale_after_us``) it
  stays live and the reference waits for it, up to ``max_wait_us`` behind the asset's newest mid. That
  delays the reference; it does not change it (a loaded worker serving partitions in turn left groups of
  markets minutes behind, and calling them stale hid the divergences of the one venue left).
- the references of an asset are known **through** the oldest latest mid of its live venues: every
  live venue has said where it stood then. One reference per ``step_us`` (1 s) of event time is
  published from the last one up to that point, each with every venue's mid *as of* its time (the
  last mid at or before it; a venue's first mid stands for the time before it), stamped ``ts_event``
  = that time. So a burst of partials after a stall yields the missing seconds, in order, and a
  divergence shows at the second it started whatever our lag.

With three or more fresh venues, one whose mid is more than ``max_divergence_bps`` from the fresh
venues' median is excluded as ``diverging`` (with two there is no majority to say who is wrong). The
price is the median of the remaining mids (exact decimals; the mean of the two middle mids for an
even count). How far references trail pipeline time (``now - through``) is exported as
``marketprism_aggregation_reference_lag_seconds``; one trailing by more than ``lagging_after_us`` is
still published (it is right in event time) and counted in
``marketprism_aggregation_reference_lagging_total`` with a warning log, rather than marked in the record.
When every venue of an asset stops, its references stop.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass
from decimal import Decimal

from pipeline.aggregation.bars import EXACT, fmt
from pipeline.aggregation.summaries import MidPartial
from pipeline.contracts.records import ReferencePrice
from pipeline.observability.metrics import counter, gauge

log = logging.getLogger(__name__)

REFERENCE_LAG = gauge(
    "aggregation_reference_lag_seconds",
    "Pipeline time minus the asset's newest quote (ts_recv), at each tick",
    ["asset"],
)
LAGGING = counter(
    "aggregation_reference_lagging_total",
    "References published more than lagging_after_us behind pipeline time",
    ["asset"],
)

USD_QUOTES = frozenset({"USD", "USDT", "USDC"})


def asset_of(symbol: str) -> str | None:
    """The reference asset a symbol prices, or None for perpetuals."""
    parts = symbol.split("-")
    if len(parts) != 2:
        return None
    base, quote = parts
    return f"{base}-{'USD' if quote in USD_QUOTES else quote}"


def median(values: list[Decimal]) -> Decimal:
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return EXACT.divide(EXACT.add(ordered[middle - 1], ordered[middle]), Decimal(2))


def divergence_bps(mid: Decimal, reference: Decimal) -> float:
    return float((mid - reference) / reference) * 1e4


@dataclass
class _Quote:
    mid: Decimal
    mid_text: str
    ts_recv: int


@dataclass
class _Venue:
    quotes: deque[_Quote]  # ascending ts_recv; pruned to the last one at or before the published time
    arrived_us: int  # pipeline time its latest mid arrived
    backlog_us: int | None = None  # pipeline time its worker last reported unread BBOs of its partition

    @property
    def latest(self) -> _Quote:
        return self.quotes[-1]

    def as_of(self, ts: int) -> _Quote:
        """The last quote at or before ``ts`` (the first one when all are later)."""
        found = self.quotes[0]
        for quote in self.quotes:
            if quote.ts_recv > ts:
                break
            found = quote
        return found

    def prune(self, through: int) -> None:
        while len(self.quotes) > 1 and self.quotes[1].ts_recv <= through:
            self.quotes.popleft()


class ReferenceTracker:
    """Keeps recent mids per venue and asset; computes :class:`ReferencePrice` records (module docstring)."""

    def __init__(
        self,
        stale_after_us: int = 5_000_000,
        max_divergence_bps: float = 50.0,
        lagging_after_us: int = 30_000_000,
        max_trail_us: int = 60_000_000,
        step_us: int = 1_000_000,
        max_wait_us: int = 600_000_000,
    ):
        self.stale_after_us = stale_after_us
        self.max_divergence_bps = max_divergence_bps
        self.lagging_after_us = lagging_after_us
        self.max_trail_us = max_trail_us
        self.step_us = step_us
        self.max_wait_us = max_wait_us
        self._venues: dict[str, dict[str, _Venue]] = {}
        self._published: dict[str, int] = {}  # asset -> ts_event of the last reference returned
        self._lagging: set[str] = set()  # assets whose last reference was lagging (to log transitions only)

    def observe(self, partial: MidPartial, arrived_us: int) -> None:
        """A mid sampled by an aggregation partition, arriving at pipeline time ``arrived_us``."""
        asset = asset_of(partial.symbol)
        if asset is None:
            return
        name = f"{partial.exchange}:{partial.symbol}"
        venues = self._venues.setdefault(asset, {})
        quote = _Quote(Decimal(partial.mid), partial.mid, partial.ts_recv)
        venue = venues.get(name)
        if venue is None:
            venues[name] = _Venue(deque([quote]), arrived_us)
            return
        venue.arrived_us = max(venue.arrived_us, arrived_us)
        if partial.ts_recv > venue.latest.ts_recv:  # an older or repeated mid never replaces a newer one
            venue.quotes.append(quote)

    def observe_backlog(self, exchange: str, symbol: str, arrived_us: int) -> None:
        """The bar worker of ``exchange:symbol`` knows of BBOs it has not read yet (at pipeline time ``arrived_us``)."""
        asset = asset_of(symbol)
        venue = self._venues.get(asset, {}).get(f"{exchange}:{symbol}") if asset is not None else None
        if venue is not None:  # before its first mid a venue takes no part in the asset's references anyway
            venue.backlog_us = max(venue.backlog_us or arrived_us, arrived_us)

    def _live(self, venue: _Venue, newest: int, now_us: int) -> bool:
        trail = newest - venue.latest.ts_recv
        if now_us - venue.arrived_us <= self.stale_after_us and trail <= self.max_trail_us:
            return True
        waiting = venue.backlog_us is not None and now_us - venue.backlog_us <= self.stale_after_us
        return waiting and trail <= self.max_wait_us

    def compute(self, now_us: int) -> list[ReferencePrice]:
        """The references of each asset from its last one up to the time all its live venues reached."""
        out = []
        for asset, venues in sorted(self._venues.items()):
            newest = max(v.latest.ts_recv for v in venues.values())
            live = {name: v for name, v in venues.items() if self._live(v, newest, now_us)}
            if not live:
                continue  # every venue stopped: nothing new to say
            through = min(v.latest.ts_recv for v in live.values())
            lag_us = max(0, now_us - through)
            REFERENCE_LAG.labels(asset).set(lag_us / 1e6)
            last = self._published.get(asset)
            if last is not None and through <= last:
                continue  # nothing new: do not repeat the same quotes under a later time
            self._note_lag(asset, lag_us)
            for ts in self._times(live, last, through):
                out.append(self._reference(asset, venues, live, ts))
            self._published[asset] = through
            for venue in venues.values():
                venue.prune(through)
        return out

    def _times(self, live: dict[str, _Venue], last: int | None, through: int) -> list[int]:
        """Event times to publish in ``(last, through]``: the live venues' mid times, at most one per step."""
        if last is None:
            return [through]
        candidates = sorted({q.ts_recv for v in live.values() for q in v.quotes if last < q.ts_recv < through})
        times: list[int] = []
        for ts in candidates:
            if ts - (times[-1] if times else last) >= self.step_us and through - ts >= self.step_us:
                times.append(ts)
        return [*times, through]  # at most one per step, ending where every live venue has spoken

    def _note_lag(self, asset: str, lag_us: int) -> None:
        if lag_us > self.lagging_after_us:
            LAGGING.labels(asset).inc()
            if asset not in self._lagging:
                self._lagging.add(asset)
                log.warning("reference of %s is %.1f s behind pipeline time (published anyway)", asset, lag_us / 1e6)
        elif asset in self._lagging:
            self._lagging.discard(asset)
            log.info("reference of %s caught up (%.1f s behind pipeline time)", asset, lag_us / 1e6)

    def _reference(self, asset: str, venues: dict[str, _Venue], live: dict[str, _Venue], ts: int) -> ReferencePrice:
        quotes = {name: (v.as_of(ts) if name in live else v.latest) for name, v in venues.items()}
        excluded: dict[str, str] = {name: "stale" for name in venues if name not in live}
        fresh = {name: q.mid for name, q in quotes.items() if name in live}  # never empty
        if len(fresh) >= 3:
            first = median(list(fresh.values()))
            for name, mid in fresh.items():
                if abs(divergence_bps(mid, first)) > self.max_divergence_bps:
                    excluded[name] = "diverging"
        included = [mid for name, mid in fresh.items() if name not in excluded]
        if not included:  # no consensus (e.g. two venues against two): exclude nobody for diverging
            excluded = {name: reason for name, reason in excluded.items() if reason != "diverging"}
            included = list(fresh.values())
        price = median(included)
        return ReferencePrice(
            asset=asset,
            ts_event=ts,
            price=fmt(price),
            venues=len(included),
            mids={name: q.mid_text for name, q in sorted(quotes.items())},
            divergence_bps={name: round(divergence_bps(q.mid, price), 4) for name, q in sorted(quotes.items())},
            excluded=dict(sorted(excluded.items())),  # type: ignore[arg-type]
        )
