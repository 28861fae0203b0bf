"""Fixtures for the venue-module tests: each real capture fed once through its venue (no I/O)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from pipeline.collectors.base import CollectorError, FrameResult, Venue
from pipeline.collectors.venues import Binance, BinanceUsdm, Coinbase, KrakenV1, Okx
from pipeline.collectors.venues.bench import feed
from pipeline.replay.capture import CaptureLine, read_capture

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
