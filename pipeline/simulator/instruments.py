"""Instruments: how each venue spells a normalised symbol and with what tick and lot precision.

Prices and sizes are integer counts of ticks and lots everywhere in the simulator; the decimals
here turn them into exact strings. Reference prices set the starting fair value of each asset.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

from pipeline.simulator.base import ScenarioError

VENUES = ("binance", "binance_usdm", "okx", "coinbase", "kraken")

REFERENCE_PRICES: dict[str, float] = {
    "BTC": 65000.0, "ETH": 3200.0, "SOL": 150.0, "BNB": 600.0, "XRP": 0.6, "DOGE": 0.15, "ADA": 0.45,
    "AVAX": 35.0, "LINK": 15.0, "DOT": 7.0, "LTC": 80.0, "TRX": 0.12, "ATOM": 9.0, "NEAR": 5.0,
}  # fmt: skip
QUOTE_PRICES: dict[str, float] = {"USD": 1.0, "USDT": 1.0, "USDC": 1.0, "EUR": 1.08, "BTC": 65000.0}

# significant price digits per venue (tick size follows the price magnitude, as on the venues)
_PRICE_DIGITS = {"binance": 7, "binance_usdm": 6, "okx": 6, "coinbase": 7, "kraken": 6}


@dataclass(frozen=True, slots=True)
class Instrument:
    venue: str
    symbol: str  # normalised BASE-QUOTE[-PERP]
    raw: str  # the venue's spelling
    asset: str  # base asset: instruments of one asset share a fair price
    perp: bool
    price_dec: int  # tick = 10**-price_dec
    size_dec: int  # lot = 10**-size_dec (contracts on OKX swaps)
    lot_base: float  # base-asset units per lot
    reference: float  # starting price in quote units

    @property
    def tick(self) -> float:
        return 10.0**-self.price_dec


def reference_price(base: str, quote: str) -> float:
    """A starting price for ``base`` in ``quote``; unknown assets get a stable made-up price."""
    usd = REFERENCE_PRICES.get(base)
    if usd is None:
        usd = 1.0 + (zlib.crc32(base.encode()) % 2000) / 20.0
    return usd / QUOTE_PRICES.get(quote, 1.0)


def _int_digits(price: float) -> int:
    return len(str(int(price))) if price >= 1 else 0


def raw_symbol(venue: str, symbol: str) -> str:
    parts = symbol.split("-")
    base, quote = parts[0], parts[1]
    perp = len(parts) > 2 and parts[2] == "PERP"
    if venue in ("binance", "binance_usdm"):
        return f"{base}{quote}"
    if venue == "okx":
        return f"{base}-{quote}-SWAP" if perp else f"{base}-{quote}"
    if venue == "kraken":
        return f"{base}/{quote}"
    return f"{base}-{quote}"


def instrument(venue: str, symbol: str) -> Instrument:
    """The instrument for a normalised symbol on a venue; :class:`ScenarioError` when impossible."""
    if venue not in VENUES:
        raise ScenarioError(f"unknown venue {venue!r}; known: {list(VENUES)}")
    parts = symbol.split("-")
    if len(parts) not in (2, 3) or not all(p.isalnum() and p.isupper() for p in parts):
        raise ScenarioError(f"{venue}: symbol {symbol!r} is not BASE-QUOTE[-PERP]")
    perp = len(parts) == 3
    if perp and parts[2] != "PERP":
        raise ScenarioError(f"{venue}: symbol {symbol!r}: only -PERP suffixes are simulated")
    if perp and venue not in ("binance_usdm", "okx"):
        raise ScenarioError(f"{venue}: {symbol!r}: perpetuals are simulated on binance_usdm and okx only")
    if venue == "binance_usdm" and not perp:
        raise ScenarioError(f"binance_usdm: {symbol!r}: USD-M symbols are perpetuals (BASE-QUOTE-PERP)")
    price = reference_price(parts[0], parts[1])
    digits = _int_digits(price)
    price_dec = max(0, min(8, _PRICE_DIGITS[venue] - digits))
    if venue == "binance":
        size_dec = min(8, digits)
    elif venue == "binance_usdm":
        size_dec = max(0, min(8, digits - 2))
    elif venue == "okx" and perp:
        size_dec = 0
    else:
        size_dec = 8
    lot_base = 10.0 ** -max(0, digits - 2) if venue == "okx" and perp else 10.0**-size_dec
    return Instrument(
        venue=venue,
        symbol=symbol,
        raw=raw_symbol(venue, symbol),
        asset=parts[0],
        perp=perp,
        price_dec=price_dec,
        size_dec=size_dec,
        lot_base=lot_base,
        reference=price,
    )
