"""Alertmanager API v2 compatibility (``/api/v2``), for reading alerts and silencing, shaped as Alertmanager's
``api/v2/openapi.yaml`` says so that ``amtool`` and karma work against MarketPrism.

Mapping: alerts in state ``firing``, ``acked`` or ``flapping`` are ``active``; ``silenced`` ones are
``suppressed`` with ``silencedBy`` (a silence) or ``inhibitedBy`` (an inhibition rule) as the rule engine
recorded; ``pending``, ``resolved`` and ``inactive`` ones are not listed (Prometheus does not send pending
alerts to Alertmanager either). Times are wall-clock RFC 3339 both ways, mapped through the pipeline
clock (``pipeline/clock.py``) when it runs faster than the wall clock. ``endsAt`` is the resolve time when
known, else the last change plus five minutes (Alertmanager's ``resolve_timeout``). Silences round-trip
through ``ops.silences.v1``; a POST with an ``id`` replaces that silence. Reads need the viewer role,
writes the operator role (author: the token).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from pipeline.api.auth import Principal
from pipeline.api.deps import operator, state_of, viewer
from pipeline.api.routes import AUTH_RESPONSES, _json
from pipeline.api.service import (
    AlertQuery,
    BadRequest,
    NotFound,
    alert_labels,
    check_silence,
    parse_matchers,
    silence_status,
)
from pipeline.clock import process_clock
from pipeline.contracts.matchers import Matcher, Op, parse_matcher
from pipeline.contracts.records import Alert, Silence

router = APIRouter(prefix="/api/v2", tags=["alertmanager v2"], responses=AUTH_RESPONSES)
RECEIVER = "marketprism"
RESOLVE_TIMEOUT_US = 300_000_000
_INHIBITED_BY = re.compile(r"\(([0-9A-Za-z]+)\)")


# ---------------------------------------------------------------- documents (Alertmanager's openapi.yaml)


class AmMatcher(BaseModel):
    name: str = Field(min_length=1, max_length=200)
    value: str = Field(max_length=1000)
    isRegex: bool
    isEqual: bool = True


class PostableSilence(BaseModel):
    model_config = ConfigDict(extra="ignore")
    id: str | None = Field(default=None, max_length=100)
    matchers: list[AmMatcher] = Field(min_length=1, max_length=20)
    startsAt: AwareDatetime
    endsAt: AwareDatetime
    createdBy: str = Field(max_length=200)
    comment: str = Field(max_length=1000)


class SilenceStatus(BaseModel):
    state: Literal["expired", "active", "pending"]


class GettableSilence(BaseModel):
    id: str
    status: SilenceStatus
    updatedAt: str
    matchers: list[AmMatcher]
    startsAt: str
    endsAt: str
    createdBy: str
    comment: str


class PostSilenceOk(BaseModel):
    silenceID: str


class Receiver(BaseModel):
    name: str


class AlertStatus(BaseModel):
    state: Literal["unprocessed", "active", "suppressed"]
    silencedBy: list[str]
    inhibitedBy: list[str]


class GettableAlert(BaseModel):
    labels: dict[str, str]
    annotations: dict[str, str]
    receivers: list[Receiver]
    fingerprint: str
    startsAt: str
    updatedAt: str
    endsAt: str
    generatorURL: str
    status: AlertStatus


class AlertGroup(BaseModel):
    labels: dict[str, str]
    receiver: Receiver
    alerts: list[GettableAlert]


class VersionInfo(BaseModel):
    version: str
    revision: str
    branch: str
    buildUser: str
    buildDate: str
    goVersion: str


class ClusterStatus(BaseModel):
    name: str
    status: Literal["ready", "settling", "disabled"]
    peers: list[dict[str, str]]


class AlertmanagerConfig(BaseModel):
    original: str


class AlertmanagerStatus(BaseModel):
    cluster: ClusterStatus
    versionInfo: VersionInfo
    config: AlertmanagerConfig
    uptime: str


# ---------------------------------------------------------------- conversions


def rfc3339(us: int) -> str:
    """A pipeline time as Alertmanager's clients read it: wall-clock RFC 3339 (the same instant when the pipeline
    runs on the wall clock; mapped through the clock when it runs faster, as ``marketprism demo --speed`` does)."""
    wall = getattr(process_clock(), "wall_us", None)
    shown = wall(us) if wall is not None else us
    return datetime.fromtimestamp(shown / 1_000_000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def to_micros(moment: datetime) -> int:
    """A client's wall-clock time as pipeline time (the inverse of :func:`rfc3339`)."""
    wall_us = int(moment.timestamp() * 1_000_000)
    at = getattr(process_clock(), "at", None)
    return int(at(wall_us)) if at is not None else wall_us


def am_matcher(text: str) -> dict[str, Any]:
    m = parse_matcher(text)
    return {"name": m.name, "value": m.value, "isRegex": m.op in ("=~", "!~"), "isEqual": m.op in ("=", "=~")}


def matcher_text(m: AmMatcher) -> str:
    op: Op = ("=~" if m.isEqual else "!~") if m.isRegex else ("=" if m.isEqual else "!=")
    return str(Matcher(m.name, op, m.value))


def am_status(alert: Alert) -> tuple[str, list[str], list[str]]:
    if alert.state != "silenced":
        return "active", [], []
    actor = alert.actor or ""
    if actor.startswith("silence:"):
        return "suppressed", [actor.removeprefix("silence:")], []
    found = _INHIBITED_BY.findall(alert.comment or "")
    return "suppressed", [], found[-1:] if found else ["inhibition"]


def gettable_alert(alert: Alert) -> dict[str, Any]:
    state, silenced_by, inhibited_by = am_status(alert)
    started = alert.fired_at or alert.active_since or alert.ts_event
    ends = alert.resolved_at or alert.ts_event + RESOLVE_TIMEOUT_US
    return {
        "labels": alert_labels(alert),
        "annotations": alert.annotations,
        "receivers": [{"name": RECEIVER}],
        "fingerprint": alert.fingerprint,
        "startsAt": rfc3339(started),
        "updatedAt": rfc3339(alert.ts_event),
        "endsAt": rfc3339(max(ends, started)),
        "generatorURL": f"/api/v1/alerts/{alert.fingerprint}",
        "status": {"state": state, "silencedBy": silenced_by, "inhibitedBy": inhibited_by},
    }


def gettable_silence(silence: Silence, now: int) -> dict[str, Any]:
    return {
        "id": silence.silence_id,
        "status": {"state": silence_status(silence, now)},
        "updatedAt": rfc3339(max(silence.created_at, min(now, silence.ends_at))),
        "matchers": [am_matcher(m) for m in silence.matchers],
        "startsAt": rfc3339(silence.starts_at),
        "endsAt": rfc3339(silence.ends_at),
        "createdBy": silence.author,
        "comment": silence.comment,
    }


Filter = Annotated[list[Annotated[str, Query(max_length=500)]], Query(max_length=20)]


def _shown(request: Request, filter: list[str], active: bool, silenced: bool, inhibited: bool) -> list[Alert]:
    matchers = parse_matchers(filter)
    out = []
    for alert in state_of(request).index.select(AlertQuery(matchers=matchers)):
        if alert.state == "pending":
            continue
        state, silenced_by, inhibited_by = am_status(alert)
        if (state == "active" and active) or (silenced_by and silenced) or (inhibited_by and inhibited):
            out.append(alert)
    return out


def _receiver_ok(receiver: str | None) -> None:
    if receiver is None:
        return
    try:
        re.compile(receiver)
    except re.error as exc:
        raise BadRequest("receiver", f"bad regex: {exc}") from None


def _receives(receiver: str | None) -> bool:
    return receiver is None or re.fullmatch(receiver, RECEIVER) is not None


# ---------------------------------------------------------------- routes


@router.get("/status", response_model=AlertmanagerStatus)
async def status(request: Request, _: Annotated[Principal, Depends(viewer)]) -> Response:
    api = state_of(request)
    return _json(
        {
            "cluster": {"name": "marketprism", "status": "ready", "peers": []},
            "versionInfo": {
                "version": "0.25.0-marketprism",
                "revision": "marketprism",
                "branch": "main",
                "buildUser": "marketprism",
                "buildDate": "",
                "goVersion": "python",
            },
            "config": {"original": "# MarketPrism: alerts come from the rule engine (ops.alerts.v1)\n"},
            "uptime": rfc3339(int(api.started * 1_000_000)),
        }
    )


@router.get("/alerts", response_model=list[GettableAlert])
async def alerts(
    request: Request,
    _: Annotated[Principal, Depends(viewer)],
    active: bool = True,
    silenced: bool = True,
    inhibited: bool = True,
    unprocessed: bool = True,
    filter: Filter = [],  # noqa: B006 - Alertmanager's parameter name; FastAPI never mutates it
    receiver: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    _receiver_ok(receiver)
    if not _receives(receiver):
        return _json([])
    return _json([gettable_alert(a) for a in _shown(request, filter, active, silenced, inhibited)])


@router.get("/alerts/groups", response_model=list[AlertGroup])
async def alert_groups(
    request: Request,
    _: Annotated[Principal, Depends(viewer)],
    active: bool = True,
    silenced: bool = True,
    inhibited: bool = True,
    filter: Filter = [],  # noqa: B006 - as above
    receiver: Annotated[str | None, Query(max_length=200)] = None,
) -> Response:
    """Groups by ``alertname`` (MarketPrism's notifier groups by rule as well)."""
    _receiver_ok(receiver)
    if not _receives(receiver):
        return _json([])
    groups: dict[str, list[dict[str, Any]]] = {}
    for alert in _shown(request, filter, active, silenced, inhibited):
        groups.setdefault(alert.rule, []).append(gettable_alert(alert))
    return _json(
        [
            {"labels": {"alertname": name}, "receiver": {"name": RECEIVER}, "alerts": members}
            for name, members in sorted(groups.items())
        ]
    )


@router.get("/silences", response_model=list[GettableSilence])
async def silences(request: Request, _: Annotated[Principal, Depends(viewer)], filter: Filter = []) -> Response:  # noqa: B006
    matchers = parse_matchers(filter)
    now = process_clock().now_us()
    out = []
    for silence in sorted(state_of(request).views.silences.by_id.values(), key=lambda s: (-s.created_at, s.silence_id)):
        if matchers:
            # Alertmanager keeps a silence when each filter matcher equals one of its matchers' label values
            values = {am["name"]: am["value"] for am in (am_matcher(m) for m in silence.matchers)}
            if not all(m.matches(values) for m in matchers):
                continue
        out.append(gettable_silence(silence, now))
    return _json(out)


@router.post(
    "/silences",
    response_model=PostSilenceOk,
    responses={404: {"description": "no silence with this id"}, 503: {"description": "the broker did not store it"}},
)
async def post_silence(
    request: Request, principal: Annotated[Principal, Depends(operator)], body: PostableSilence
) -> Response:
    api = state_of(request)
    texts = [matcher_text(m) for m in body.matchers]
    starts, ends = to_micros(body.startsAt), to_micros(body.endsAt)
    now = process_clock().now_us()
    if body.id:
        if body.id not in api.views.silences.by_id:
            raise NotFound(f"id: no silence {body.id!r}")
        if api.views.silences.by_id[body.id].ends_at <= now:
            raise BadRequest("id", "an expired silence cannot be updated", "body")
    starts = max(starts, now) if starts < now - 60_000_000 and ends > now else starts
    check_silence(texts, starts, ends, where="am")
    silence = await api.commands.add_silence(texts, starts, ends, principal.name, body.comment, silence_id=body.id)
    return _json({"silenceID": silence.silence_id})


SilenceId = Annotated[str, Path(min_length=1, max_length=100)]


@router.get("/silence/{silence_id}", response_model=GettableSilence, responses={404: {"description": "not found"}})
async def get_silence(request: Request, _: Annotated[Principal, Depends(viewer)], silence_id: SilenceId) -> Response:
    silence = state_of(request).views.silences.by_id.get(silence_id)
    if silence is None:
        raise NotFound(f"silence_id: no silence {silence_id!r}")
    return _json(gettable_silence(silence, process_clock().now_us()))


@router.delete(
    "/silence/{silence_id}",
    responses={404: {"description": "not found"}, 503: {"description": "the broker did not store it"}},
)
async def delete_silence(
    request: Request, principal: Annotated[Principal, Depends(operator)], silence_id: SilenceId
) -> Response:
    api = state_of(request)
    silence = api.views.silences.by_id.get(silence_id)
    if silence is None:
        raise NotFound(f"silence_id: no silence {silence_id!r}")
    await api.commands.expire_silence(silence, principal.name)
    return Response(status_code=200)
