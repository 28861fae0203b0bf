"""The pure, seeded generator: a discrete-event loop over simulated time that moves the markets,
applies the incidents and asks each venue's protocol for its frames.

Nothing here reads a clock or does I/O: the same scenario (seed included) gives the same frames and
labels, byte for byte, whether a test iterates :meth:`Engine.run` or the server paces
:meth:`Engine.step` against wall time. Events at equal times run in the order they were scheduled.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterator

from pipeline.simulator.base import Frame
from pipeline.simulator.incidents import Incidents
from pipeline.simulator.instruments import instrument
from pipeline.simulator.labels import Label
from pipeline.simulator.market import Asset, MarketParams, SymbolMarket, seeded
from pipeline.simulator.protocols import PROTOCOLS, Protocol
from pipeline.simulator.scenario import POINT_KINDS, Scenario

PRICE_STEP_US = 100_000  # fair prices and incident effects move every 100 ms
FIXED_BOOK_US = {"binance": 100_000, "binance_usdm": 100_000}  # depth@100ms venues
TRADE_CHANNELS = frozenset({"trade", "aggTrade", "trades", "market_trades"})
PRICE, BOOK, TRADE, SECOND, LIQ, START, END, DISCONNECT, MALFORMED = range(9)


class Engine:
    """Markets, protocols and incidents of one scenario, stepped one event at a time."""

    def __init__(self, scenario: Scenario, on_label: Callable[[Label], None] | None = None):
        self.scenario = scenario
        self.seed = scenario.seed
        self.start_us = scenario.start_us
        self.end_us = self.start_us + round(scenario.duration_s * 1_000_000)
        self.params = MarketParams(**scenario.market.model_dump())
        self.labels: list[Label] = []
        self._on_label = on_label
        self.assets: dict[str, Asset] = {}
        self.markets: list[SymbolMarket] = []
        self.protocols: dict[str, Protocol] = {}
        for venue, symbols in scenario.symbols.items():
            depth = PROTOCOLS[venue].book_depth or self.params.depth
            venue_markets = []
            for symbol in symbols:
                inst = instrument(venue, symbol)
                asset = self.assets.get(inst.asset)
                if asset is None:
                    asset = Asset(inst.asset, inst.reference, self.params, seeded(self.seed, "asset", inst.asset))
                    self.assets[inst.asset] = asset
                m = SymbolMarket(inst, asset, self.params, seeded(self.seed, venue, symbol), depth)
                venue_markets.append(m)
            self.markets.extend(venue_markets)
            self.protocols[venue] = PROTOCOLS[venue](venue_markets)
        self.incidents = Incidents(scenario, self.markets, self._label)
        self._ids = {scenario.incident_id(n): n for n in range(len(scenario.incidents))}
        self._rng = seeded(self.seed, "engine")
        self._heap: list[tuple[int, int, int, int]] = []
        self._order = itertools.count()
        self.now_us = self.start_us
        self._schedule(self.start_us, PRICE, 0)
        self._schedule(self.start_us, SECOND, 0)
        for i, m in enumerate(self.markets):
            self._schedule(self.start_us + self._book_gap(m), BOOK, i)
            self._schedule(self.start_us + self._gap(self.params.trade_rate), TRADE, i)
            if m.inst.perp and self.params.liquidation_rate > 0:
                self._schedule(self.start_us + self._gap(self.params.liquidation_rate), LIQ, i)
        for n, inc in enumerate(scenario.incidents):
            start, end = self.incidents.times(inc)
            self._schedule(start, START, n)
            if inc.kind not in POINT_KINDS:
                self._schedule(end, END, n)
            if inc.kind == "disconnect_storm":
                self._schedule(start, DISCONNECT, n)
            elif inc.kind == "malformed_frames":
                self._schedule(start + self._gap(inc.rate_per_s), MALFORMED, n)

    # -- scheduling ---------------------------------------------------------------------------------
    def _schedule(self, t_us: int, kind: int, arg: int) -> None:
        heapq.heappush(self._heap, (t_us, next(self._order), kind, arg))

    def _gap(self, rate: float) -> int:
        return max(1, round(self._rng.expovariate(rate) * 1_000_000))

    def _book_gap(self, m: SymbolMarket) -> int:
        fixed = FIXED_BOOK_US.get(m.inst.venue)
        return fixed if fixed is not None else self._gap(self.params.book_rate)

    def _label(self, label: Label) -> None:
        self.labels.append(label)
        if self._on_label is not None:
            self._on_label(label)

    def next_time(self) -> int | None:
        """Simulated time of the next event, or None when the scenario is over."""
        if not self._heap or self._heap[0][0] > self.end_us:
            return None
        return self._heap[0][0]

    def run(self, until_us: int | None = None) -> Iterator[Frame]:
        """Every frame up to ``until_us`` (default: the scenario's end), in order."""
        limit = self.end_us if until_us is None else min(until_us, self.end_us)
        while self._heap and self._heap[0][0] <= limit:
            yield from self.step()

    # -- one event ----------------------------------------------------------------------------------
    def step(self) -> list[Frame]:
        t, _, kind, arg = heapq.heappop(self._heap)
        self.now_us = t
        if kind == PRICE:
            return self._price(t)
        if kind == SECOND:
            return self._second(t, arg)
        if kind in (BOOK, TRADE, LIQ):
            m = self.markets[arg]
            if kind == BOOK:
                self._schedule(t + self._book_gap(m), BOOK, arg)
                return [] if m.effects.stalled else self._book(m, t)
            if kind == TRADE:
                self._schedule(t + self._gap(self.params.trade_rate * m.effects.rate_mult), TRADE, arg)
                return [] if m.effects.stalled else self._trade(m, t)
            self._schedule(t + self._gap(self.params.liquidation_rate), LIQ, arg)
            if m.effects.stalled:
                return []
            liq = m.liquidation(t - m.effects.lag_us)
            return self._frames(t, m.inst.venue, self.protocols[m.inst.venue].liquidation(m, liq, liq.ts_us))
        inc = self.scenario.incidents[arg]
        if kind == START:
            self.incidents.start(arg, t)
        elif kind == END:
            self.incidents.end(arg, t)
        elif kind == DISCONNECT:
            _, end = self.incidents.times(inc)
            nxt = t + round(inc.interval_s * 1_000_000)
            if nxt < end:
                self._schedule(nxt, DISCONNECT, arg)
            return [Frame(t, inc.venue, "", "", kind="disconnect")]
        elif kind == MALFORMED:
            return self._malformed(t, arg)
        return []

    def _frames(self, t: int, venue: str, out: list[tuple[str, str]], trade_id: str | None = None) -> list[Frame]:
        if trade_id is None:
            return [Frame(t, venue, key, text) for key, text in out]
        return [
            Frame(t, venue, key, text, trade_id=trade_id if key.partition("|")[0] in TRADE_CHANNELS else None)
            for key, text in out
        ]

    def _price(self, t: int) -> list[Frame]:
        dt = PRICE_STEP_US / 1_000_000
        for asset in self.assets.values():
            asset.step(dt)
        for m in self.markets:
            m.step_noise(dt)
        if self.incidents.active:
            self.incidents.update(t)
        self._schedule(t + PRICE_STEP_US, PRICE, 0)
        return []

    def _second(self, t: int, n: int) -> list[Frame]:
        frames: list[Frame] = []
        for m in self.markets:
            if not m.effects.stalled:
                venue = m.inst.venue
                frames += self._frames(t, venue, self.protocols[venue].periodic(m, t - m.effects.lag_us, n))
        for venue, proto in self.protocols.items():
            frames += self._frames(t, venue, proto.heartbeat(t, n))
        self._schedule(t + 1_000_000, SECOND, n + 1)
        return frames

    def _book(self, m: SymbolMarket, t: int) -> list[Frame]:
        changes = m.update_book()
        if not changes:
            return []
        e = m.effects
        venue, raw = m.inst.venue, m.inst.raw
        proto = self.protocols[venue]
        corrupt = bool(e.corrupt_book)
        seq_before = proto.book_seq(raw)
        frames = self._frames(t, venue, proto.book(m, changes, t - e.lag_us, corrupt))
        if corrupt:
            ident = e.corrupt_book.pop(0)
            self.incidents.label(self._ids[ident], t, t, {"seq": proto.book_seq(raw), "channel": proto.book_key(raw)})
        if e.drop_book:
            ident = e.drop_book.pop(0)
            key = proto.book_key(raw)
            detail: dict[str, object] = {"channel": key}
            if seq_before is not None:
                detail.update(seq_first=seq_before + 1, seq_last=proto.book_seq(raw))
            else:
                detail["sequence_num"] = "skipped on every connection subscribed to the channel"
            self.incidents.label(self._ids[ident], t, t, detail)
            frames = [
                Frame(f.t_us, venue, key, "", kind="skip") if f.key == key else f
                for f in frames
                if f.key != key or proto.connection_seq
            ]
        return frames

    def _trade(self, m: SymbolMarket, t: int) -> list[Frame]:
        trade = m.trade(t - m.effects.lag_us)
        venue = m.inst.venue
        ident = f"{m.inst.raw}:{trade.trade_id}"
        return self._frames(t, venue, self.protocols[venue].trade(m, trade, trade.ts_us), trade_id=ident)

    def _malformed(self, t: int, n: int) -> list[Frame]:
        inc = self.scenario.incidents[n]
        _, end = self.incidents.times(inc)
        nxt = t + self._gap(inc.rate_per_s)
        if nxt < end:
            self._schedule(nxt, MALFORMED, n)
        targets = self.incidents.targets(inc)
        m = targets[self._rng.randrange(len(targets))]
        out = self.protocols[inc.venue].malformed(m, self._rng, t - m.effects.lag_us)
        return [Frame(t, inc.venue, key, text, kind="malformed") for key, text in out]
