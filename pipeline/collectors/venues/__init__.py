"""One module per venue protocol; ``VENUES`` maps an exchange id to its class."""

from pipeline.collectors.base import Venue
from pipeline.collectors.venues.binance import Binance
from pipeline.collectors.venues.binance_usdm import BinanceUsdm
from pipeline.collectors.venues.coinbase import Coinbase
from pipeline.collectors.venues.kraken import Kraken, KrakenV1
from pipeline.collectors.venues.okx import Okx

VENUES: dict[str, type[Venue]] = {
    Binance.exchange: Binance,
    BinanceUsdm.exchange: BinanceUsdm,
    Okx.exchange: Okx,
    Coinbase.exchange: Coinbase,
    Kraken.exchange: Kraken,
}

__all__ = ["VENUES", "Binance", "BinanceUsdm", "Coinbase", "Kraken", "KrakenV1", "Okx"]
