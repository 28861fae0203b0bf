"""The scenario file: seed, start time, duration, markets, symbols per venue and scripted incidents.

Loaded from YAML and validated with pydantic; every problem is reported as one
:class:`~pipeline.simulator.base.ScenarioError` naming the field (``incidents.3.venue: ...``).
The default scenario ships as ``scenarios/default.yaml`` and exercises every incident kind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pipeline.simulator.base import ScenarioError, parse_time
from pipeline.simulator.instruments import VENUES, instrument

DEFAULT_SCENARIO = Path(__file__).with_name("scenarios") / "default.yaml"

KINDS = (
    "price_spike", "flash_crash", "volume_burst", "spread_blowout", "frozen_price", "feed_stall",
    "disconnect_storm", "sequence_gap", "bad_checksum", "crossed_book", "latency_increase",
    "venue_divergence", "malformed_frames",
)  # fmt: skip
POINT_KINDS = frozenset({"sequence_gap", "bad_checksum"})
VENUE_WIDE_KINDS = frozenset({"feed_stall", "disconnect_storm", "latency_increase", "malformed_frames"})
SEQUENCED = frozenset({"binance", "binance_usdm", "okx", "coinbase"})  # venues whose books carry sequences
CHECKSUMMED = frozenset({"okx", "kraken"})  # venues whose books carry checksums

DEFAULT_SYMBOLS: dict[str, list[str]] = {
    "binance": ["BTC-USDT", "ETH-USDT"],
    "binance_usdm": ["BTC-USDT-PERP", "ETH-USDT-PERP"],
    "okx": ["BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"],
    "coinbase": ["BTC-USD", "ETH-USD"],
    "kraken": ["BTC-USD", "ETH-USD"],
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class MarketModel(_Strict):
    vol_calm: float = Field(default=0.8, gt=0, le=50)
    vol_volatile: float = Field(default=3.0, gt=0, le=100)
    regime_mean_s: float = Field(default=60.0, gt=0)
    trade_rate: float = Field(default=4.0, gt=0, le=10_000, description="trades/s per venue symbol")
    book_rate: float = Field(default=10.0, gt=0, le=10_000, description="book updates/s (Binance: every 100 ms)")
    depth: int = Field(default=20, ge=5, le=400)
    trade_notional: float = Field(default=800.0, gt=0)
    level_notional: float = Field(default=20_000.0, gt=0)
    basis_bps: float = Field(default=3.0, ge=0, le=1000)
    noise_bps: float = Field(default=1.0, ge=0, le=1000)
    liquidation_rate: float = Field(default=0.05, ge=0, le=1000)


class Incident(_Strict):
    """One scripted incident; ``at_s``/``duration_s`` are simulated seconds from the start."""

    id: str | None = None
    kind: Literal[KINDS]  # type: ignore[valid-type]
    venue: Literal[VENUES]  # type: ignore[valid-type]
    symbol: str | None = Field(default=None, description="normalised symbol; omitted = every symbol (venue-wide kinds)")
    at_s: float = Field(ge=0)
    duration_s: float = Field(default=0.0, ge=0)
    magnitude_pct: float = Field(default=5.0, gt=0, le=90, description="price_spike, flash_crash, venue_divergence")
    multiplier: float = Field(default=10.0, ge=1, le=1000, description="volume_burst (rate and size), spread_blowout")
    cross_ticks: int = Field(default=3, ge=1, description="crossed_book: best bid this many ticks above best ask")
    lag_ms: int = Field(default=2000, ge=1, description="latency_increase: venue timestamps lag simulated time by this")
    interval_s: float = Field(default=2.0, gt=0, description="disconnect_storm: seconds between disconnects")
    rate_per_s: float = Field(default=2.0, gt=0, le=1000, description="malformed_frames: malformed frames per second")

    @model_validator(mode="after")
    def _fits_kind(self) -> Incident:
        if self.symbol is None and self.kind not in VENUE_WIDE_KINDS:
            raise ValueError(f"{self.kind} needs a symbol")
        if self.symbol is not None:
            instrument(self.venue, self.symbol)  # raises ScenarioError (a ValueError) when impossible
        if self.kind in POINT_KINDS and self.duration_s:
            raise ValueError(f"{self.kind} is a point incident: leave duration_s out")
        if self.kind not in POINT_KINDS and self.duration_s <= 0:
            raise ValueError(f"{self.kind} needs duration_s > 0")
        if self.kind == "sequence_gap" and self.venue not in SEQUENCED:
            raise ValueError(f"{self.venue} books carry no sequence numbers; sequence_gap needs {sorted(SEQUENCED)}")
        if self.kind == "bad_checksum" and self.venue not in CHECKSUMMED:
            raise ValueError(f"{self.venue} books carry no checksum; bad_checksum needs {sorted(CHECKSUMMED)}")
        return self


class Scenario(_Strict):
    name: str = "scenario"
    seed: int = 7
    start: str = Field(default="2026-01-01T00:00:00Z", description="simulated start time, RFC 3339 UTC")
    duration_s: float = Field(default=300.0, gt=0, description="simulated seconds to run")
    market: MarketModel = Field(default_factory=lambda: MarketModel())
    symbols: dict[Literal[VENUES], list[str]] = Field(  # type: ignore[valid-type]
        default_factory=lambda: {k: list(v) for k, v in DEFAULT_SYMBOLS.items()}
    )
    incidents: list[Incident] = Field(default_factory=list)

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        try:
            parse_time(value)
        except ValueError as exc:
            raise ValueError(f"not an RFC 3339 time: {value!r}") from exc
        return value

    @field_validator("symbols")
    @classmethod
    def _symbols(cls, value: dict[str, list[str]]) -> dict[str, list[str]]:
        for venue, symbols in value.items():
            for symbol in symbols:
                instrument(venue, symbol)
            if len(set(symbols)) != len(symbols):
                raise ValueError(f"{venue}: duplicate symbols")
        return value

    @model_validator(mode="after")
    def _incidents(self) -> Scenario:
        ids = set()
        for n, inc in enumerate(self.incidents):
            if inc.symbol is not None and inc.symbol not in self.symbols.get(inc.venue, []):
                raise ValueError(f"incidents.{n}: {inc.venue} does not simulate {inc.symbol}")
            if inc.venue not in self.symbols or not self.symbols[inc.venue]:
                raise ValueError(f"incidents.{n}: venue {inc.venue} has no symbols")
            ident = self.incident_id(n)
            if ident in ids:
                raise ValueError(f"incidents.{n}: duplicate id {ident!r}")
            ids.add(ident)
        return self

    @property
    def start_us(self) -> int:
        return parse_time(self.start)

    def incident_id(self, n: int) -> str:
        return self.incidents[n].id or f"inc-{n + 1:02d}"


def _problems(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or '<root>'}: {e['msg']}" for e in exc.errors())


def scenario_from(data: Any, source: str = "scenario") -> Scenario:
    try:
        return Scenario.model_validate(data)
    except ValidationError as exc:
        raise ScenarioError(f"{source}: invalid scenario: {_problems(exc)}") from None


def load_scenario(path: Path | None = None, **overrides: Any) -> Scenario:
    """Read and validate a scenario file (the shipped default when ``path`` is None)."""
    path = path or DEFAULT_SCENARIO
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ScenarioError(f"{path}: not YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ScenarioError(f"{path}: a scenario is a mapping (seed, duration_s, symbols, incidents, ...)")
    data.update({k: v for k, v in overrides.items() if v is not None})
    return scenario_from(data, str(path))
