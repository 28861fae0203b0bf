"""Fixtures for the venue-module tests: each real capture fed once through its venue (no I/O); and
:class:`ReferenceBook`, the naive order book that :func:`assert_book_follows_reference` checks
``L2Book`` against (import them with ``from .conftest import ...``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import pytest

from pipeline.bench.venues import feed
from pipeline.collectors.base import CollectorError, FrameResult, Venue
from pipeline.collectors.book import L2Book
from pipeline.collectors.capture import CaptureLine, read_capture
from pipeline.collectors.venues import Binance, BinanceUsdm, Coinbase, KrakenV1, Okx

CAPTURES: dict[str, tuple[type[Venue], list[str]]] = {
    "binance": (Binance, ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    "binance_futures": (BinanceUsdm, ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"]),
    "okx": (Okx, ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]),
    "coinbase": (Coinbase, ["BTC-USD", "ETH-USD"]),
    "kraken": (
        KrakenV1,
        [
            "WAVES-EUR",
            "XMR-USD",
            "KSM-BTC",
            "GRT-ETH",
            "SC-EUR",
            "ETH-CHF",
            "OCEAN-BTC",
            "OMG-USD",
            "BTC-CHF",
            "ADA-BTC",
        ],
    ),
}


@dataclass
class CaptureRun:
    """One capture fed through a fresh venue: every line with its outcome."""

    name: str
    venue: Venue
    lines: list[CaptureLine]
    outcomes: list[tuple[CaptureLine, FrameResult | CollectorError]]

    @property
    def results(self) -> list[FrameResult]:
        return [outcome for _, outcome in self.outcomes if isinstance(outcome, FrameResult)]

    @property
    def errors(self) -> list[tuple[CaptureLine, CollectorError]]:
        return [(line, outcome) for line, outcome in self.outcomes if isinstance(outcome, CollectorError)]


@pytest.fixture(scope="session")
def capture_run(replay_dir: Path) -> Callable[[str], CaptureRun]:
    cache: dict[str, CaptureRun] = {}

    def run(name: str) -> CaptureRun:
        if name not in cache:
            cls, symbols = CAPTURES[name]
            venue = cls(symbols)
            lines = list(read_capture(replay_dir / f"{name}.txt"))
            cache[name] = CaptureRun(name, venue, lines, list(feed(venue, lines)))
        return cache[name]

    return run


Level = tuple[str, str]  # (price, size) as the venue wrote them


class ReferenceBook:
    """A naive L2 book: one dict per side keyed by the exact ``Decimal`` price, holding the level as
    written; a zero size (in any spelling) removes the level; ``depth`` > 0 keeps only the best levels."""

    def __init__(self, depth: int = 0) -> None:
        self.depth = depth
        self.bids: dict[Decimal, Level] = {}
        self.asks: dict[Decimal, Level] = {}

    def apply(self, bids: list[Level], asks: list[Level]) -> None:
        for side, changes, best_first in ((self.bids, bids, True), (self.asks, asks, False)):
            for price, size in changes:
                if Decimal(size) == 0:
                    side.pop(Decimal(price), None)
                else:
                    side[Decimal(price)] = (price, size)
            if self.depth:
                for key in sorted(side, reverse=best_first)[self.depth :]:
                    del side[key]

    def levels(self) -> tuple[list[Level], list[Level]]:
        """Both sides, best first."""
        return [self.bids[k] for k in sorted(self.bids, reverse=True)], [self.asks[k] for k in sorted(self.asks)]

    def crossed(self) -> bool:
        return bool(self.bids and self.asks and max(self.bids) >= min(self.asks))


def assert_book_follows_reference(
    steps: list[tuple[list[Level], list[Level]]], depth: int, n: int, best_first: bool = False
) -> None:
    """Apply each (bid changes, ask changes) step to a fresh ``L2Book(depth)`` and a :class:`ReferenceBook`;
    after every step the book's top ``n``, best, levels, crossing and sizes are the reference's
    (``best_first``: the best levels are read before the top ``n``, i.e. without the cached top)."""
    book, reference = L2Book(depth), ReferenceBook(depth)
    for bids, asks in steps:
        book.apply(bids, asks)
        reference.apply(bids, asks)
        want_bids, want_asks = reference.levels()
        best = (want_bids[0] if want_bids else None, want_asks[0] if want_asks else None)
        if best_first:
            assert book.best() == best
            assert book.crossed() == reference.crossed()
        assert book.top(n) == (want_bids[:n], want_asks[:n])
        assert book.best() == best
        assert book.levels() == (want_bids, want_asks)
        assert book.crossed() == reference.crossed()
        assert book.sizes() == (len(want_bids), len(want_asks))
