"""One wire encoder per venue (``PROTOCOLS`` maps an exchange id to its class)."""

from __future__ import annotations

from pipeline.simulator.protocols.base import Connection, Protocol
from pipeline.simulator.protocols.binance import BinanceSpot
from pipeline.simulator.protocols.binance_usdm import BinanceUsdm
from pipeline.simulator.protocols.coinbase import Coinbase
from pipeline.simulator.protocols.kraken import Kraken
from pipeline.simulator.protocols.okx import Okx

PROTOCOLS: dict[str, type[Protocol]] = {
    "binance": BinanceSpot,
    "binance_usdm": BinanceUsdm,
    "okx": Okx,
    "coinbase": Coinbase,
    "kraken": Kraken,
}

__all__ = ["PROTOCOLS", "Connection", "Protocol"]
