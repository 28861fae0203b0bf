"""One typed settings object for every process, from ``MARKETPRISM_*`` variables and an optional YAML file.

Precedence: init arguments > environment (``MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS=...``, nested with
``__``) > the YAML file (``MARKETPRISM_CONFIG`` or ``--config``) > defaults. Invalid settings fail at
start with a message naming the field (:func:`load_settings`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

VENUES = ("binance", "binance_usdm", "okx", "coinbase", "kraken")


class SettingsError(ValueError):
    """Settings could not be loaded; the message names each failing field."""


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    client_id: str = "marketprism"
    compression_type: Literal["gzip", "lz4", "zstd", "snappy"] | None = "zstd"
    linger_ms: int = Field(default=10, ge=0)
    max_batch_size: int = Field(default=262144, gt=0)
    # Consumer-group timing: low enough that a worker joins in seconds on Tansu.
    session_timeout_ms: int = Field(default=10000, gt=0)
    heartbeat_interval_ms: int = Field(default=1000, gt=0)
    rebalance_timeout_ms: int = Field(default=5000, gt=0)

    @field_validator("bootstrap_servers")
    @classmethod
    def _hosts(cls, value: str) -> str:
        for server in value.split(","):
            host, sep, port = server.strip().rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port...], got {value!r}")
        return value


class VenueSettings(BaseModel):
    enabled: bool = True
    symbols: list[str] = Field(default_factory=lambda: ["BTC-USDT", "ETH-USDT"])
    ws_url: str | None = None  # endpoint override (replay server, simulator)
    rest_url: str | None = None
    proxy: str | None = None  # http://, socks5:// proxy for this venue


class InfraSettings(BaseModel):
    broker_host: str = "127.0.0.1"
    broker_port: int = Field(default=19092, gt=0, lt=65536)
    clickhouse_tcp_port: int = Field(default=19000, gt=0, lt=65536)
    clickhouse_http_port: int = Field(default=18123, gt=0, lt=65536)


class ClockSettings(BaseModel):
    """Pipeline time (pipeline/clock.py): the wall clock unless ``origin_us`` is set; then the wall clock until
    ``origin_us`` (epoch microseconds) and ``speed`` times faster from then on. Every process of one pipeline
    must get the same values (``marketprism demo --speed`` sets them for its children)."""

    speed: float = Field(default=1.0, gt=0, le=1000)
    origin_us: int | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _origin_with_speed(self) -> ClockSettings:
        if self.speed != 1 and self.origin_us is None:
            raise ValueError("clock.speed other than 1 needs clock.origin_us (one time line for every process)")
        return self


def _default_venues() -> dict[str, VenueSettings]:
    return {
        "binance": VenueSettings(symbols=["BTC-USDT", "ETH-USDT"]),
        "binance_usdm": VenueSettings(symbols=["BTC-USDT-PERP", "ETH-USDT-PERP"]),
        "okx": VenueSettings(symbols=["BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"]),
        "coinbase": VenueSettings(symbols=["BTC-USD", "ETH-USD"]),
        "kraken": VenueSettings(symbols=["BTC-USD", "ETH-USD"]),
    }


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MARKETPRISM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    clickhouse_url: str = "chdb:///.marketprism/chdb"
    venues: dict[str, VenueSettings] = Field(default_factory=_default_venues)
    metrics_port: int = Field(default=9108, ge=0, lt=65536)  # 0 disables the /metrics server
    state_dir: Path = Path(".marketprism")
    infra: InfraSettings = Field(default_factory=InfraSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    clock: ClockSettings = Field(default_factory=ClockSettings)

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, value: str) -> str:
        if not value.startswith(("chdb://", "clickhouse://", "clickhouses://")):
            raise ValueError("expected chdb:///path or clickhouse://user:pass@host:9000/db")
        return value

    @field_validator("venues")
    @classmethod
    def _venues(cls, value: dict[str, VenueSettings]) -> dict[str, VenueSettings]:
        unknown = sorted(set(value) - set(VENUES))
        if unknown:
            raise ValueError(f"unknown venue(s) {unknown}; known: {list(VENUES)}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config_file = os.environ.get("MARKETPRISM_CONFIG")
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    def topic(self, name: str) -> str:
        """The full (prefixed) name of a registry topic."""
        return f"{self.topic_prefix}{name}"


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Build the settings, turning validation errors into one message that names each field."""
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist")
        os.environ["MARKETPRISM_CONFIG"] = str(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from exc
