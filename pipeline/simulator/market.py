"""The synthetic market: one fair price per asset, one order book and trade tape per venue symbol.

Fair prices follow a geometric random walk whose volatility switches between a calm and a volatile
regime (a two-state Markov chain). Each venue quotes the fair price times its own small basis and
mean-reverting noise, plus whatever the active incidents add (:class:`Effects`). A venue book keeps
exactly ``depth`` levels per side: the best bid/ask sit one spread around the venue price, deeper
levels on a fixed price grid, and a few level sizes change on every update. Trades arrive as a
Poisson process at the touch with log-normal sizes. The latent model uses floats; every price and
size leaves it as an integer count of ticks or lots, so wire strings are exact decimals.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass, field

from pipeline.simulator.instruments import Instrument

YEAR_S = 365.25 * 86_400


def seeded(seed: int, *names: str) -> random.Random:
    """An independent, reproducible generator for one named part of the simulation."""
    digest = hashlib.blake2b(f"{seed}/{'/'.join(names)}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "big"))  # noqa: S311 - simulation/jitter randomness, not security


@dataclass(frozen=True, slots=True)
class MarketParams:
    vol_calm: float = 0.8  # annualised volatility in the calm regime
    vol_volatile: float = 3.0
    regime_mean_s: float = 60.0  # mean time between regime switches
    trade_rate: float = 4.0  # trades per second per venue symbol
    book_rate: float = 10.0  # book updates per second (Poisson venues; Binance is every 100 ms)
    depth: int = 20  # levels per side (Kraken keeps 10)
    trade_notional: float = 800.0  # median trade notional in quote units
    level_notional: float = 20_000.0  # median level notional in quote units
    basis_bps: float = 3.0  # scale of the per-venue basis
    noise_bps: float = 1.0  # scale of the per-venue mean-reverting noise
    liquidation_rate: float = 0.05  # liquidations per second per perpetual


@dataclass(slots=True)
class Effects:
    """What the active incidents do to one venue symbol right now (see ``incidents``)."""

    shock: float = 0.0  # relative price offset (spike > 0, crash < 0)
    divergence: float = 0.0  # relative offset of this venue from the others
    rate_mult: float = 1.0
    size_mult: float = 1.0
    spread_mult: float = 1.0
    frozen: bool = False
    stalled: bool = False
    cross_ticks: int = 0
    lag_us: int = 0
    drop_book: list[str] = field(default_factory=list)  # incident ids waiting to drop one book message
    corrupt_book: list[str] = field(default_factory=list)  # incident ids waiting to corrupt one checksum


class Asset:
    """The fair price of one asset (in USD), with its volatility regime."""

    __slots__ = ("calm", "log_price", "name", "params", "rng")

    def __init__(self, name: str, usd: float, params: MarketParams, rng: random.Random):
        self.name = name
        self.log_price = math.log(usd)
        self.calm = True
        self.params = params
        self.rng = rng

    @property
    def price(self) -> float:
        return math.exp(self.log_price)

    def step(self, dt_s: float) -> None:
        p = self.params
        if self.rng.random() < dt_s / p.regime_mean_s:
            self.calm = not self.calm
        sigma = p.vol_calm if self.calm else p.vol_volatile
        var = sigma * sigma * dt_s / YEAR_S
        self.log_price += self.rng.gauss(-0.5 * var, math.sqrt(var))


class Book:
    """Price levels as ``{ticks: lots}`` per side."""

    __slots__ = ("asks", "bids")

    def __init__(self) -> None:
        self.bids: dict[int, int] = {}
        self.asks: dict[int, int] = {}

    def top_bids(self, n: int) -> list[tuple[int, int]]:
        return sorted(self.bids.items(), reverse=True)[:n]

    def top_asks(self, n: int) -> list[tuple[int, int]]:
        return sorted(self.asks.items())[:n]

    def best(self) -> tuple[tuple[int, int], tuple[int, int]]:
        bid = max(self.bids)
        ask = min(self.asks)
        return (bid, self.bids[bid]), (ask, self.asks[ask])


Change = tuple[bool, int, int]  # (is_bid, price ticks, lots; 0 removes the level)


@dataclass(slots=True)
class TradePrint:
    trade_id: int
    price: int  # ticks
    size: int  # lots
    buy: bool  # taker side
    ts_us: int = 0  # venue time of the trade


class SymbolMarket:
    """One instrument on one venue: its quote of the fair price, book, trades and counters."""

    def __init__(self, inst: Instrument, asset: Asset, params: MarketParams, rng: random.Random, depth: int):
        self.inst = inst
        self.asset = asset
        self.params = params
        self.rng = rng
        self.depth = depth
        self.scale = inst.reference / asset.price  # quote units per fair USD
        self.basis = rng.gauss(0.0, params.basis_bps * 1e-4)
        self.noise = 0.0
        self.effects = Effects()
        self.book = Book()
        self.tick = inst.tick
        self.grid = max(1, round(inst.reference * 5e-5 / self.tick))
        self.spread = max(1, round(inst.reference * 2e-6 / self.tick))
        self.next_trade_id = 1_000_000 + rng.randrange(1_000_000)
        self.trades: list[TradePrint] = []  # recent trades (for snapshot replies)
        self.last_price = 0
        self.volume = 0  # lots traded so far
        self.quote_volume = 0  # ticks * lots traded so far
        self.high = 0
        self.low = 0
        self.open_interest = max(1, round(5e6 / (inst.reference * inst.lot_base)))
        self.update_book()
        self.open_price = self.last_price = self.mid_ticks()
        self.high = self.low = self.last_price

    # -- prices --------------------------------------------------------------------------------------
    def venue_price(self) -> float:
        e = self.effects
        return self.asset.price * self.scale * (1.0 + self.basis + self.noise + e.divergence) * (1.0 + e.shock)

    def step_noise(self, dt_s: float) -> None:
        theta = 1.0  # mean reversion per second
        sd = self.params.noise_bps * 1e-4
        self.noise += -theta * self.noise * dt_s + self.rng.gauss(0.0, sd * math.sqrt(2 * theta * dt_s))

    def mid_ticks(self) -> int:
        (bid, _), (ask, _) = self.book.best()
        return (bid + ask) // 2

    def _lots(self, notional: float, sigma: float) -> int:
        median = notional / (self.inst.reference * self.inst.lot_base)
        return max(1, int(self.rng.lognormvariate(math.log(max(median, 1.0)), sigma)))

    # -- book ----------------------------------------------------------------------------------------
    def update_book(self) -> list[Change]:
        """Move the book to the current venue price; returns the level changes (none when frozen)."""
        e = self.effects
        book = self.book
        if e.frozen and book.bids:
            return []
        mid = self.venue_price() / self.tick
        spread = max(1, round(self.spread * e.spread_mult))
        best_bid = math.floor(mid - spread / 2)
        best_ask = best_bid + spread
        if e.cross_ticks:
            best_bid = best_ask + e.cross_ticks
        g, n = self.grid, self.depth - 1
        top = (best_bid // g) * g
        if top == best_bid:
            top -= g
        bids = [best_bid, *range(top, top - g * n, -g)]
        top = -(-best_ask // g) * g
        if top == best_ask:
            top += g
        asks = [best_ask, *range(top, top + g * n, g)]
        changes: list[Change] = []
        for is_bid, side, wanted in ((True, book.bids, bids), (False, book.asks, asks)):
            for price in side.keys() - set(wanted):
                del side[price]
                changes.append((is_bid, price, 0))
            for price in wanted:
                if price not in side:
                    size = self._lots(self.params.level_notional, 0.9)
                    side[price] = size
                    changes.append((is_bid, price, size))
        for _ in range(1 + int(self.rng.expovariate(1.0))):
            is_bid = self.rng.random() < 0.5
            prices = bids if is_bid else asks
            price = prices[min(len(prices) - 1, int(self.rng.expovariate(0.25)))]
            size = self._lots(self.params.level_notional, 0.9)
            side = book.bids if is_bid else book.asks
            if side.get(price) != size:
                side[price] = size
                changes.append((is_bid, price, size))
        return changes

    # -- trades --------------------------------------------------------------------------------------
    def trade(self, ts_us: int) -> TradePrint:
        e = self.effects
        buy = self.rng.random() < 0.5
        if e.frozen:
            price = self.last_price
        else:
            (bid, _), (ask, _) = self.book.best()
            price = ask if buy else bid
        size = max(1, round(self._lots(self.params.trade_notional, 1.2) * e.size_mult))
        trade = TradePrint(self.next_trade_id, price, size, buy, ts_us)
        self.next_trade_id += 1
        self.last_price = price
        self.volume += size
        self.quote_volume += size * price
        self.high = max(self.high, price)
        self.low = min(self.low, price)
        self.trades.append(trade)
        if len(self.trades) > 50:
            del self.trades[:25]
        return trade

    def liquidation(self, ts_us: int) -> TradePrint:
        (bid, _), (ask, _) = self.book.best()
        buy = self.rng.random() < 0.5
        return TradePrint(0, ask if buy else bid, self._lots(self.params.trade_notional * 5, 1.0), buy, ts_us)

    def step_open_interest(self) -> None:
        self.open_interest = max(1, self.open_interest + round(self.rng.gauss(0, self.open_interest * 0.002)))

    def funding_rate_e8(self) -> int:
        """Funding rate in units of 1e-8, from the premium of this venue over the fair price."""
        premium = self.venue_price() / (self.asset.price * self.scale) - 1.0
        return max(-750_000, min(750_000, 10_000 + round(premium * 1e8 / 8)))
