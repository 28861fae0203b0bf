"""Cross-venue reference price per asset: the median of the venues' mids, with each venue's divergence.

Assets are spot symbols grouped by base and quote, with USD, USDT and USDC counted as one ``USD``
quote (``binance:BTC-USDT`` and ``coinbase:BTC-USD`` both price ``BTC-USD``); perpetuals are left
out (their basis is not a price disagreement).

Staleness is judged in event time, among the venues of one asset, never against our own clock: a
venue is ``stale`` when its last quote (``ts_recv``, the collectors' receipt time on the shared
pipeline clock) is more than ``stale_after_us`` older than the asset's newest quote. A venue that
stops is excluded as soon as the others move on; when the aggregator itself lags (a loaded machine, an
accelerated demo) every quote is old by the same amount and the reference is still computed. With
three or more fresh venues, one whose mid is more than ``max_divergence_bps`` from the fresh venues'
median is excluded as ``diverging`` (with two there is no majority to say who is wrong). The price is
the median of the remaining mids (exact decimals; the mean of the two middle mids for an even count).

``ts_event`` of a reference is that newest quote's ``ts_recv``: the market time the reference
describes, not the time we computed it. :meth:`ReferenceTracker.compute` returns a reference for an
asset only when its newest quote moved on since the last one returned, so ``ts_event`` strictly
increases per asset and no record repeats old quotes: when every venue of an asset stops, its
references stop. How far a reference trails pipeline time (``now - ts_event``) is exported as
``marketprism_aggregation_reference_lag_seconds``; one trailing by more than ``lagging_after_us`` is
still published (it is right in event time) and counted in
``marketprism_aggregation_reference_lagging_total`` with a warning log, rather than marked in the record.
"""

from __future__ import annotations

import logging
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


class ReferenceTracker:
    """Keeps the last mid per venue and asset; computes :class:`ReferencePrice` records (module docstring)."""

    def __init__(
        self, stale_after_us: int = 5_000_000, max_divergence_bps: float = 50.0, lagging_after_us: int = 30_000_000
    ):
        self.stale_after_us = stale_after_us
        self.max_divergence_bps = max_divergence_bps
        self.lagging_after_us = lagging_after_us
        self._quotes: dict[str, dict[str, _Quote]] = {}
        self._published: dict[str, int] = {}  # asset -> ts_event of the last reference returned
        self._lagging: set[str] = set()  # assets whose last reference was lagging (to log transitions only)

    def observe(self, partial: MidPartial) -> None:
        asset = asset_of(partial.symbol)
        if asset is None:
            return
        venue = f"{partial.exchange}:{partial.symbol}"
        venues = self._quotes.setdefault(asset, {})
        known = venues.get(venue)
        if known is None or partial.ts_recv >= known.ts_recv:
            venues[venue] = _Quote(Decimal(partial.mid), partial.mid, partial.ts_recv)

    def compute(self, now_us: int) -> list[ReferencePrice]:
        """References of the assets whose newest quote moved on since the last call, stamped with it.

        ``now_us`` (pipeline time) only measures how far the references trail it; it decides nothing."""
        out = []
        for asset, venues in sorted(self._quotes.items()):
            newest = max(q.ts_recv for q in venues.values())
            lag_us = max(0, now_us - newest)
            REFERENCE_LAG.labels(asset).set(lag_us / 1e6)
            if newest <= self._published.get(asset, -1):
                continue  # nothing new: do not repeat the same quotes under a later time
            self._published[asset] = newest
            if lag_us > self.lagging_after_us:
                LAGGING.labels(asset).inc()
                if asset not in self._lagging:
                    self._lagging.add(asset)
                    log.warning(
                        "reference of %s is %.1f s behind pipeline time (published anyway)", asset, lag_us / 1e6
                    )
            elif asset in self._lagging:
                self._lagging.discard(asset)
                log.info("reference of %s caught up (%.1f s behind pipeline time)", asset, lag_us / 1e6)
            out.append(self._reference(asset, venues, newest))
        return out

    def _reference(self, asset: str, venues: dict[str, _Quote], newest: int) -> ReferencePrice:
        excluded = {v: "stale" for v, q in venues.items() if newest - q.ts_recv > self.stale_after_us}
        fresh = {v: q.mid for v, q in venues.items() if v not in excluded}  # never empty: the newest is fresh
        if len(fresh) >= 3:
            first = median(list(fresh.values()))
            for venue, mid in fresh.items():
                if abs(divergence_bps(mid, first)) > self.max_divergence_bps:
                    excluded[venue] = "diverging"
        included = [mid for venue, mid in fresh.items() if venue not in excluded]
        if not included:  # no consensus (e.g. two venues against two): exclude nobody for diverging
            excluded = {v: reason for v, reason in excluded.items() if reason != "diverging"}
            included = list(fresh.values())
        price = median(included)
        return ReferencePrice(
            asset=asset,
            ts_event=newest,
            price=fmt(price),
            venues=len(included),
            mids={v: q.mid_text for v, q in sorted(venues.items())},
            divergence_bps={v: round(divergence_bps(q.mid, price), 4) for v, q in sorted(venues.items())},
            excluded=dict(sorted(excluded.items())),  # type: ignore[arg-type]
        )
