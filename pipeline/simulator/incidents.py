"""What each incident kind does to the market and the wire, and when its label is written.

Interval kinds change the :class:`~pipeline.simulator.market.Effects` of the venue symbols they
target from ``at_s`` to ``at_s + duration_s`` and are labelled when they start. Point kinds
(``sequence_gap``, ``bad_checksum``) arm the next book message of the symbol (dropped, or sent with
a wrong checksum) and are labelled when that message is due, with the sequence range it carried.
``disconnect_storm`` and ``malformed_frames`` schedule their own events (drops, bad frames).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from pipeline.simulator.labels import Label
from pipeline.simulator.market import Effects, SymbolMarket
from pipeline.simulator.scenario import POINT_KINDS, Incident, Scenario

PARAMS: dict[str, tuple[str, ...]] = {
    "price_spike": ("magnitude_pct",), "flash_crash": ("magnitude_pct",), "venue_divergence": ("magnitude_pct",),
    "volume_burst": ("multiplier",), "spread_blowout": ("multiplier",), "crossed_book": ("cross_ticks",),
    "latency_increase": ("lag_ms",), "disconnect_storm": ("interval_s",), "malformed_frames": ("rate_per_s",),
}  # fmt: skip
BURST_SIZE_MULT = 2.0  # a volume burst also doubles trade sizes


@dataclass(slots=True)
class Active:
    ident: str
    incident: Incident
    start_us: int
    end_us: int
    markets: list[SymbolMarket]


class Incidents:
    """The scenario's incidents against the engine's markets."""

    def __init__(self, scenario: Scenario, markets: list[SymbolMarket], emit: Callable[[Label], None]):
        self.scenario = scenario
        self.emit = emit
        self.start_us = scenario.start_us
        self.active: dict[str, Active] = {}
        self.touched: set[int] = set()  # ids of markets whose effects incidents changed
        self.by_venue: dict[str, list[SymbolMarket]] = {}
        for m in markets:
            self.by_venue.setdefault(m.inst.venue, []).append(m)

    def ident(self, n: int) -> str:
        return self.scenario.incident_id(n)

    def targets(self, inc: Incident) -> list[SymbolMarket]:
        return [m for m in self.by_venue.get(inc.venue, []) if inc.symbol is None or m.inst.symbol == inc.symbol]

    def times(self, inc: Incident) -> tuple[int, int]:
        start = self.start_us + round(inc.at_s * 1_000_000)
        return start, start + round(inc.duration_s * 1_000_000)

    def label(self, n: int, start_us: int, end_us: int, detail: dict[str, object] | None = None) -> None:
        inc = self.scenario.incidents[n]
        raw = self.targets(inc)[0].inst.raw if inc.symbol else None
        params = {name: getattr(inc, name) for name in PARAMS.get(inc.kind, ())}
        self.emit(Label(
            id=self.ident(n), kind=inc.kind, venue=inc.venue, symbol=inc.symbol, raw_symbol=raw,
            start_us=start_us, end_us=end_us, params=params, detail=detail or {},
        ))  # fmt: skip

    def start(self, n: int, t_us: int) -> None:
        inc = self.scenario.incidents[n]
        markets = self.targets(inc)
        ident = self.ident(n)
        if inc.kind in POINT_KINDS:
            for m in markets:
                (m.effects.drop_book if inc.kind == "sequence_gap" else m.effects.corrupt_book).append(ident)
            return
        start, end = self.times(inc)
        self.active[ident] = Active(ident, inc, start, end, markets)
        self.label(n, t_us, end)
        self.update(t_us)

    def end(self, n: int, t_us: int) -> None:
        self.active.pop(self.ident(n), None)
        self.update(t_us)

    def update(self, t_us: int) -> None:
        """Recompute the effects of every market an incident touches at ``t_us``."""
        fresh: dict[int, Effects] = {}
        for a in self.active.values():
            inc = a.incident
            progress = min(1.0, max(0.0, (t_us - a.start_us) / max(1, a.end_us - a.start_us)))
            for m in a.markets:
                e = fresh.setdefault(id(m), Effects(drop_book=m.effects.drop_book, corrupt_book=m.effects.corrupt_book))
                kind = inc.kind
                if kind == "price_spike":
                    e.shock += inc.magnitude_pct / 100 * (1.0 - progress)
                elif kind == "flash_crash":
                    e.shock -= inc.magnitude_pct / 100 * (1.0 - progress)
                elif kind == "venue_divergence":
                    e.divergence += inc.magnitude_pct / 100 * min(1.0, 2 * progress)
                elif kind == "volume_burst":
                    e.rate_mult *= inc.multiplier
                    e.size_mult *= BURST_SIZE_MULT
                elif kind == "spread_blowout":
                    e.spread_mult *= inc.multiplier
                elif kind == "frozen_price":
                    e.frozen = True
                elif kind == "feed_stall":
                    e.stalled = True
                elif kind == "crossed_book":
                    e.cross_ticks = inc.cross_ticks
                elif kind == "latency_increase":
                    e.lag_us = inc.lag_ms * 1000
        for markets in self.by_venue.values():
            for m in markets:
                if id(m) in fresh:
                    m.effects = fresh[id(m)]
                    self.touched.add(id(m))
                elif id(m) in self.touched:
                    m.effects = Effects(drop_book=m.effects.drop_book, corrupt_book=m.effects.corrupt_book)
                    self.touched.discard(id(m))
