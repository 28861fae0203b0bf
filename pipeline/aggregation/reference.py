"""Cross-venue reference price per asset: the median of the venues' mids, with each venue's divergence.

Assets are spot symbols grouped by base and quote, with USD, USDT and USDC counted as one ``USD``
quote (``binance:BTC-USDT`` and ``coinbase:BTC-USD`` both price ``BTC-USD``); perpetuals are left
out (their basis is not a price disagreement). A venue whose last quote is older than
``stale_after_us`` (by wall clock) is excluded as ``stale``; with three or more fresh venues, one
whose mid is more than ``max_divergence_bps`` from the fresh venues' median is excluded as
``diverging`` (with two there is no majority to say who is wrong). The price is the median of the
remaining mids (exact decimals; the mean of the two middle mids for an even count).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from pipeline.aggregation.bars import EXACT, fmt
from pipeline.aggregation.summaries import MidPartial
from pipeline.contracts.records import ReferencePrice

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
    """Keeps the last mid per venue and asset; computes :class:`ReferencePrice` records."""

    def __init__(self, stale_after_us: int = 5_000_000, max_divergence_bps: float = 50.0):
        self.stale_after_us = stale_after_us
        self.max_divergence_bps = max_divergence_bps
        self._quotes: dict[str, dict[str, _Quote]] = {}

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
        out = []
        for asset, venues in sorted(self._quotes.items()):
            excluded = {v: "stale" for v, q in venues.items() if now_us - q.ts_recv > self.stale_after_us}
            fresh = {v: q.mid for v, q in venues.items() if v not in excluded}
            if not fresh:
                continue
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
            out.append(
                ReferencePrice(
                    asset=asset,
                    ts_event=now_us,
                    price=fmt(price),
                    venues=len(included),
                    mids={v: q.mid_text for v, q in sorted(venues.items())},
                    divergence_bps={v: round(divergence_bps(q.mid, price), 4) for v, q in sorted(venues.items())},
                    excluded=dict(sorted(excluded.items())),  # type: ignore[arg-type]
                )
            )
        return out
