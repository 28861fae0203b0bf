"""Request and response documents of ``/api/v1`` (pydantic: they make the OpenAPI 3.1 document).

Responses are encoded with msgspec straight from the contract records (fast); these models describe the same
JSON, and the schemathesis test checks every response against them. The record models mirror
``pipeline/contracts/records.py`` field for field (prices stay decimal strings, times epoch microseconds).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

AlertState = Literal["inactive", "pending", "firing", "resolved", "acked", "silenced", "flapping"]
Severity = Literal["P1", "P2", "P3", "P4"]
DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"


class _Out(BaseModel):
    model_config = ConfigDict(extra="allow")


class AlertOut(_Out):
    fingerprint: str
    rule: str
    state: AlertState
    severity: Severity
    labels: dict[str, str]
    annotations: dict[str, str]
    ts_event: int
    active_since: int | None
    fired_at: int | None
    resolved_at: int | None
    value: float | None
    version: int
    actor: str | None
    comment: str | None


class AlertPage(BaseModel):
    items: list[AlertOut]
    total: int = Field(description="alerts matching the filters")
    offset: int
    limit: int
    next_offset: int | None = Field(description="offset of the next page, null on the last one")


class AlertGroup(BaseModel):
    labels: dict[str, str]
    count: int
    alerts: list[AlertOut]


class AlertGroups(BaseModel):
    groups: list[AlertGroup]
    total: int


class AlertDetail(BaseModel):
    alert: AlertOut
    silenced_by: list[str]


class ActionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str | None = Field(default=None, max_length=1000)


class ActionOut(BaseModel):
    action_id: str
    fingerprint: str
    action: Literal["ack", "unack", "resolve"]
    actor: str
    ts: int
    comment: str | None


class SilenceOut(_Out):
    silence_id: str
    matchers: list[str]
    starts_at: int
    ends_at: int
    author: str
    comment: str
    created_at: int
    status: Literal["expired", "pending", "active"]


class SilenceList(BaseModel):
    items: list[SilenceOut]


class SilenceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matchers: list[str] = Field(min_length=1, max_length=20, description='Alertmanager matchers, e.g. exchange="okx"')
    duration_s: int | None = Field(default=None, gt=0, le=90 * 86400, description="from now (or starts_at)")
    starts_at: int | None = Field(default=None, ge=0, le=2**53, description="epoch microseconds (default: now)")
    ends_at: int | None = Field(default=None, ge=0, le=2**53, description="epoch microseconds (or duration_s)")
    comment: str = Field(default="", max_length=1000)


class PreviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    matchers: list[str] = Field(min_length=1, max_length=20)


class SilenceCreated(BaseModel):
    silence: SilenceOut
    matching_alerts: list[AlertOut]


class Preview(BaseModel):
    matching_alerts: list[AlertOut]


class AnomalyOut(_Out):
    series_id: str
    metric: str
    ts_event: int
    value: float | None
    score: float
    detector: str
    exchange: str | None
    symbol: str | None
    stream: str | None
    expected: float | None
    lower: float | None
    upper: float | None
    kind: Literal["anomaly", "forecast"]
    time_to_threshold_s: float | None


class AnomalyItem(BaseModel):
    anomaly: AnomalyOut
    related_alerts: list[str] = Field(description="fingerprints of the current alerts about this series")
    suggested_action: str


class AnomalyList(BaseModel):
    items: list[AnomalyItem]


class StreamHealth(_Out):
    exchange: str
    stream: str
    source: Literal["collector", "aggregator"]
    ts_event: int


class Venue(BaseModel):
    exchange: str
    health_score: float | None
    streams: list[StreamHealth]
    firing_alerts: int


class VenueList(BaseModel):
    items: list[Venue]


class Market(BaseModel):
    market: str
    bbo: dict[str, object] | None
    bar_1s: dict[str, object] | None
    bar_1m: dict[str, object] | None
    reference: dict[str, object] | None


class MarketList(BaseModel):
    items: list[Market]


class Rows(BaseModel):
    columns: list[str]
    rows: list[dict[str, object]]
    truncated: bool = Field(description="the row limit cut the answer")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    behind: dict[str, int] = Field(description="records each view was behind the ends it had at start")
    error: str | None


class WhoAmI(BaseModel):
    name: str
    role: Literal["viewer", "operator", "admin"]
    via: Literal["jwt", "api_key"]
