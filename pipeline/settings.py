"""One typed settings object for every process, from ``MARKETPRISM_*`` variables and an optional YAML file.

Precedence: init arguments > environment (``MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS=...``, nested with
``__``) > the YAML file (``MARKETPRISM_CONFIG`` or ``--config``) > defaults. Invalid settings fail at
start with a message naming the field (:func:`load_settings`).

Secrets never reach ``repr``, logs or errors: passwords and keys are :class:`~pydantic.SecretStr`, URLs that may
carry credentials (``clickhouse_url``, venue proxies) are :class:`SecretUrl` (a ``str`` whose ``repr`` hides the
password). Each secret can also come from a file (``*_file`` settings, e.g. ``MARKETPRISM_CLICKHOUSE_PASSWORD_FILE=
/run/secrets/clickhouse``: the container-secrets convention); a file's trailing newline is dropped.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, urlsplit, urlunsplit

from pydantic import (
    BaseModel,
    Field,
    GetCoreSchemaHandler,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema, core_schema
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

VENUES = ("binance", "binance_usdm", "okx", "coinbase", "kraken")


class SettingsError(ValueError):
    """Settings could not be loaded; the message names each failing field."""


class SecretUrl(str):
    """A URL that may carry credentials (``scheme://user:password@host``): usable as the ``str`` it is, but its
    ``repr`` (and :meth:`masked`) replaces the password, so a settings ``repr``, a traceback or a log of the
    settings object does not show it. Code that needs a URL in a message uses :meth:`masked`."""

    __slots__ = ()

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> CoreSchema:
        return core_schema.no_info_after_validator_function(
            cls, core_schema.str_schema(), serialization=core_schema.plain_serializer_function_ser_schema(str)
        )

    def masked(self) -> str:
        parts = urlsplit(self)
        if parts.password is None:
            return str.__str__(self)
        host = parts.hostname or ""
        netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def __repr__(self) -> str:
        return repr(self.masked())

    def with_password(self, password: str) -> SecretUrl:
        """This URL with ``password`` (URL-quoted) in place of the one it carries."""
        parts = urlsplit(self)
        user = parts.username or "default"
        netloc = f"{user}:{quote(password, safe='')}@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
        return SecretUrl(urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment)))


def read_secret_file(path: Path) -> SecretStr:
    """A secret from a file (container secrets), without its trailing newline."""
    try:
        return SecretStr(path.read_text().rstrip("\r\n"))
    except OSError as exc:
        raise ValueError(f"secret file {path} unreadable: {exc.strerror}") from None


class KafkaSettings(BaseModel):
    bootstrap_servers: str = "127.0.0.1:19092"
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    sasl_password_file: Path | None = None  # the password from a file (container secrets) instead
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

    @model_validator(mode="after")
    def _password_file(self) -> KafkaSettings:
        if self.sasl_password_file is not None:
            self.sasl_password = read_secret_file(self.sasl_password_file)
        if self.sasl_mechanism and not self.sasl_username:
            raise ValueError("kafka.sasl_mechanism needs kafka.sasl_username")
        if self.sasl_mechanism and not self.security_protocol.startswith("SASL_"):
            raise ValueError("kafka.sasl_mechanism needs security_protocol SASL_PLAINTEXT or SASL_SSL")
        return self


class VenueSettings(BaseModel):
    enabled: bool = True
    symbols: list[str] = Field(default_factory=lambda: ["BTC-USDT", "ETH-USDT"])
    ws_url: str | None = None  # endpoint override (replay server, simulator)
    rest_url: str | None = None
    proxy: SecretUrl | None = None  # http://, socks5:// proxy for this venue (its credentials stay out of repr)


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


class LimitSettings(BaseModel):
    """Bounds on what a peer controls (docs/security.md): a venue's websocket frame size (checked after
    permessage-deflate decompression), a REST body (after gzip/deflate decompression) and a ``Retry-After`` delay."""

    ws_max_frame_bytes: int = Field(default=16 * 1024 * 1024, gt=0)  # full-depth snapshots run to megabytes
    rest_max_body_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    retry_after_max_s: float = Field(default=60.0, gt=0)


class SecuritySettings(BaseModel):
    """Keys and bounds for state the pipeline reads back from its own topics (docs/security.md).

    Checkpoints (the anomaly worker's model tables, the rule engine's checkpoints) carry an HMAC-SHA256 tag
    under ``checkpoint_key``; a record whose tag does not verify under that key or one of
    ``checkpoint_previous_keys`` is refused (dead letter) and never decoded. Rotation: add the new key as
    ``checkpoint_key`` and the old one to ``checkpoint_previous_keys``, restart the workers, and drop the old key
    once every checkpoint was rewritten (the anomaly worker rewrites each series within
    ``--checkpoint-interval``; the rule engine every second). Without a key (or key file) each host generates one
    in ``<state_dir>/secrets/checkpoint.key`` (mode 0600): enough for one host, while several hosts need the
    same configured key."""

    checkpoint_key: SecretStr | None = None
    checkpoint_key_file: Path | None = None
    checkpoint_previous_keys: list[SecretStr] = Field(default_factory=list)
    # a checkpoint larger than this (stored, or once decompressed) is refused; writers warn when they exceed it
    checkpoint_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)

    @model_validator(mode="after")
    def _key_file(self) -> SecuritySettings:
        if self.checkpoint_key_file is not None:
            self.checkpoint_key = read_secret_file(self.checkpoint_key_file)
        if self.checkpoint_key is not None and len(self.checkpoint_key.get_secret_value()) < 16:
            raise ValueError("security.checkpoint_key must have at least 16 characters")
        return self


def _default_venues() -> dict[str, VenueSettings]:
    return {
        "binance": VenueSettings(symbols=["BTC-USDT", "ETH-USDT"]),
        "binance_usdm": VenueSettings(symbols=["BTC-USDT-PERP", "ETH-USDT-PERP"]),
        "okx": VenueSettings(symbols=["BTC-USDT", "ETH-USDT", "BTC-USDT-PERP"]),
        "coinbase": VenueSettings(symbols=["BTC-USD", "ETH-USD"]),
        "kraken": VenueSettings(symbols=["BTC-USD", "ETH-USD"]),
    }


class ApiKeySettings(BaseModel):
    """A static API key of ``marketprism api``: the SHA-256 hex digest of the key (never the key) and its role."""

    sha256: SecretStr
    role: Literal["viewer", "operator", "admin"] = "viewer"


class ApiSettings(BaseModel):
    """``marketprism api`` (docs/api.md): listen address, token verification, limits. HS256 tokens need
    ``jwt_secret``; RS256/ES256 tokens are verified against ``jwks_url`` (an OIDC provider's JWKS, ``https://``
    or ``file://``). ``exp``, ``nbf``, ``aud`` and ``iss`` are always checked."""

    host: str = "127.0.0.1"
    port: int = Field(default=8080, gt=0, lt=65536)
    jwt_secret: SecretStr | None = None
    jwt_issuer: str = "marketprism"
    jwt_audience: str = "marketprism-api"
    jwks_url: str | None = None
    token_ttl_s: int = Field(default=12 * 3600, gt=0)
    api_keys: dict[str, ApiKeySettings] = Field(default_factory=dict)  # name -> hashed key and role
    rate_limit_per_s: float = Field(default=50.0, gt=0)  # per token (token bucket)
    rate_limit_burst: int = Field(default=200, gt=0)
    max_body_bytes: int = Field(default=65_536, gt=0)
    cors_origins: list[str] = Field(default_factory=list)  # empty: no CORS headers at all
    market_tail: int = Field(default=2_000, ge=0)  # records per partition of md.* read back at start
    recent_anomalies: int = Field(default=5_000, gt=0)  # anomalies and forecasts kept in memory
    sse_queue: int = Field(default=1_000, gt=0)  # events a stream client may lag before it is dropped
    sse_heartbeat_s: float = Field(default=15.0, gt=0)

    @field_validator("jwt_secret")
    @classmethod
    def _secret_length(cls, value: SecretStr | None) -> SecretStr | None:
        if value is None or not value.get_secret_value():
            return None  # unset or empty: HS256 tokens are refused
        if len(value.get_secret_value()) < 32:
            raise ValueError("api.jwt_secret needs at least 32 characters (e.g. openssl rand -hex 32)")
        return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="MARKETPRISM_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topic_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9._-]*$")
    # deployment environment: sets the replication factor and min.insync.replicas `topics apply|check` enforce
    # (topics/registry.yaml `environments`): prod 3 / 2, local 1 / 1
    environment: Literal["local", "prod"] = "local"
    clickhouse_url: SecretUrl = SecretUrl("chdb:///.marketprism/chdb")
    # the password of clickhouse_url's user, kept out of the URL (it replaces any password the URL carries)
    clickhouse_password: SecretStr | None = None
    clickhouse_password_file: Path | None = None
    venues: dict[str, VenueSettings] = Field(default_factory=_default_venues)
    metrics_port: int = Field(default=9108, ge=0, lt=65536)  # 0 disables the /metrics server
    metrics_host: str = "127.0.0.1"  # the /metrics listener's address (0.0.0.0 in a container that is scraped)
    security: SecuritySettings = Field(default_factory=SecuritySettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    state_dir: Path = Path(".marketprism")
    infra: InfraSettings = Field(default_factory=InfraSettings)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    clock: ClockSettings = Field(default_factory=ClockSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)

    @field_validator("clickhouse_url")
    @classmethod
    def _clickhouse_url(cls, value: SecretUrl) -> SecretUrl:
        if not value.startswith(("chdb://", "clickhouse://", "clickhouses://")):
            raise ValueError("expected chdb:///path or clickhouse://user@host:9000/db")
        return SecretUrl(value)

    @model_validator(mode="after")
    def _clickhouse_password(self) -> Settings:
        if self.clickhouse_password_file is not None:
            self.clickhouse_password = read_secret_file(self.clickhouse_password_file)
        if self.clickhouse_password is not None:
            if self.clickhouse_url.startswith("chdb://"):
                raise ValueError("clickhouse_password is for a clickhouse:// server, not the embedded chdb")
            self.clickhouse_url = self.clickhouse_url.with_password(self.clickhouse_password.get_secret_value())
        return self

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
