"""``/api/v1``: thin routes. Each declares the role it needs (``Depends(viewer|operator)``) and calls the
service or the views; documents are encoded with msgspec from the contract records."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response

from pipeline.api.auth import Principal
from pipeline.api.deps import operator, state_of, viewer
from pipeline.api.history import (
    ALERT_NOTIFICATIONS,
    ALERT_TRANSITIONS,
    ANOMALY_POINTS,
    BARS,
    MAX_RANGE_US,
    History,
    HistoryUnavailable,
)
from pipeline.api.models import (
    ActionIn,
    ActionOut,
    AlertDetail,
    AlertGroups,
    AlertPage,
    AlertState,
    AnomalyList,
    Health,
    MarketList,
    Preview,
    PreviewIn,
    Readiness,
    Rows,
    Severity,
    SilenceCreated,
    SilenceIn,
    SilenceList,
    VenueList,
    WhoAmI,
)
from pipeline.api.service import (
    ACTIVE_STATES,
    DEFAULT_LIMIT,
    MAX_LIMIT,
    MAX_MATCHER_LEN,
    MAX_MATCHERS,
    MAX_OFFSET,
    MAX_RULE_LEN,
    MAX_TEXT_LEN,
    MAX_VENUE_LEN,
    AlertQuery,
    BadRequest,
    NotFound,
    check_silence,
    group_alerts,
    parse_matchers,
    related_alerts,
    render_alert_page,
    silence_status,
    silencing,
    suggested_action,
)
from pipeline.clock import process_clock
from pipeline.contracts.records import Silence
from pipeline.contracts.topics import ALERTS, ANOMALIES, BAR_TOPICS, NOTIFICATIONS

__all__ = ["Health", "Readiness", "router"]

_encoder = msgspec.json.Encoder()

AUTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "missing, malformed, expired or forged token"},
    403: {"description": "the token's role may not do this"},
    429: {"description": "per-token rate limit exceeded (Retry-After)"},
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: {"description": "no such object"}}
WRITE: dict[int | str, dict[str, Any]] = {**NOT_FOUND, 503: {"description": "the broker did not store the command"}}
UNAVAILABLE: dict[int | str, dict[str, Any]] = {503: {"description": "ClickHouse history unavailable"}}
Label = Annotated[str, Query(max_length=200)]
Fingerprint = Annotated[str, Path(min_length=1, max_length=200)]


def _json(doc: object, status: int = 200) -> Response:
    return Response(_encoder.encode(doc), status_code=status, media_type="application/json")


_api = state_of
router = APIRouter(prefix="/api/v1", responses=AUTH_RESPONSES)
Viewer = Annotated[Principal, Depends(viewer)]
Operator = Annotated[Principal, Depends(operator)]


async def alert_query(
    state: Annotated[list[AlertState], Query(description="alert states (default: the active ones)")] = [],  # noqa: B006 - FastAPI reads the default, never mutated
    severity: Annotated[list[Severity], Query()] = [],  # noqa: B006 - as above
    venue: Annotated[list[Annotated[str, Query(max_length=MAX_VENUE_LEN)]], Query(description="exchange label")] = [],  # noqa: B006
    rule: Annotated[list[Annotated[str, Query(max_length=MAX_RULE_LEN)]], Query()] = [],  # noqa: B006
    filter: Annotated[
        list[Annotated[str, Query(max_length=MAX_MATCHER_LEN)]],
        Query(description='Alertmanager matchers, e.g. exchange="okx" or rule=~"Feed.*"', max_length=MAX_MATCHERS),
    ] = [],  # noqa: B006
    q: Annotated[str | None, Query(max_length=MAX_TEXT_LEN, description="text in rule, labels or annotations")] = None,
    include_inactive: Annotated[bool, Query(description="also resolved and inactive alerts")] = False,
) -> AlertQuery:
    return AlertQuery(
        states=tuple(state),
        severities=tuple(severity),
        venues=tuple(venue),
        rules=tuple(rule),
        matchers=parse_matchers(filter),
        text=q,
        include_inactive=include_inactive,
    )


@router.get("/whoami", response_model=WhoAmI, tags=["auth"])
async def whoami(principal: Viewer) -> Response:
    return _json({"name": principal.name, "role": principal.role, "via": principal.via})


@router.get("/alerts", response_model=AlertPage, tags=["alerts"])
async def list_alerts(
    request: Request,
    _: Viewer,
    query: Annotated[AlertQuery, Depends(alert_query)],
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
) -> Response:
    """Current alerts (the compacted ops.alerts.v1), most severe and newest first, one page."""
    body = render_alert_page(_api(request).index, request.url.query, query, offset, limit)
    return Response(body, media_type="application/json")


@router.get("/alerts/groups", response_model=AlertGroups, tags=["alerts"])
async def alert_groups(
    request: Request,
    _: Viewer,
    query: Annotated[AlertQuery, Depends(alert_query)],
    group_by: Annotated[
        list[Annotated[str, Query(max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]],
        Query(min_length=1, max_length=10, description="label names, e.g. exchange"),
    ],
    limit: Annotated[int, Query(ge=1, le=500, description="alerts shown per group")] = 50,
) -> Response:
    selected = _api(request).index.select(query)
    groups = group_alerts(selected, group_by)
    for group in groups:
        group["alerts"] = group["alerts"][:limit]
    return _json({"groups": groups, "total": len(selected)})


def _alert(request: Request, fingerprint: str):  # type: ignore[no-untyped-def]
    alert = _api(request).views.alerts.by_fingerprint.get(fingerprint)
    if alert is None:
        raise NotFound(f"fingerprint: no alert {fingerprint!r}")
    return alert


@router.get("/alerts/{fingerprint}", response_model=AlertDetail, responses=NOT_FOUND, tags=["alerts"])
async def get_alert(request: Request, _: Viewer, fingerprint: Fingerprint) -> Response:
    alert = _alert(request, fingerprint)
    return _json({"alert": alert, "silenced_by": silencing(_api(request).views, alert, process_clock().now_us())})


def _history(request: Request) -> History:
    api = _api(request)
    history: History | None = getattr(request.app.state, "history", None)
    if history is None:
        history = request.app.state.history = History(api.settings.clickhouse_url, api.settings.topic_prefix)
    return history


async def _rows(request: Request, template: str, topic: str, limit: int, **params: Any) -> Response:
    try:
        rows = await _history(request).rows(template, topic, limit, **params)
    except HistoryUnavailable as exc:
        return _json({"detail": f"history unavailable: {exc}"}, 503)
    return _json({"columns": rows.columns, "rows": rows.rows, "truncated": rows.truncated})


@router.get(
    "/alerts/{fingerprint}/history",
    response_model=Rows,
    responses=UNAVAILABLE,
    tags=["alerts"],
)
async def alert_history(
    request: Request,
    _: Viewer,
    fingerprint: Fingerprint,
    kind: Annotated[Literal["transitions", "notifications"], Query()] = "transitions",
    limit: Annotated[int, Query(ge=1, le=5000)] = 500,
) -> Response:
    """The alert's state changes (table ``alerts``) or its delivery attempts (``notifications``) from ClickHouse."""
    if kind == "transitions":
        return await _rows(request, ALERT_TRANSITIONS, ALERTS.name, limit, fingerprint=fingerprint)
    return await _rows(request, ALERT_NOTIFICATIONS, NOTIFICATIONS.name, limit, fingerprint=fingerprint)


async def _act(
    request: Request, principal: Principal, fingerprint: str, action: str, body: ActionIn | None
) -> Response:
    _alert(request, fingerprint)
    record = await _api(request).commands.alert_action(
        fingerprint, action, principal.name, body.comment if body else None
    )
    return _json(record, 202)


@router.post("/alerts/{fingerprint}/ack", status_code=202, response_model=ActionOut, responses=WRITE, tags=["alerts"])
async def ack(
    request: Request, principal: Operator, fingerprint: Fingerprint, body: ActionIn | None = None
) -> Response:
    """Acknowledge an alert (published to ops.alert_actions.v1, the actor is the token's name)."""
    return await _act(request, principal, fingerprint, "ack", body)


@router.post("/alerts/{fingerprint}/unack", status_code=202, response_model=ActionOut, responses=WRITE, tags=["alerts"])
async def unack(
    request: Request, principal: Operator, fingerprint: Fingerprint, body: ActionIn | None = None
) -> Response:
    return await _act(request, principal, fingerprint, "unack", body)


@router.post(
    "/alerts/{fingerprint}/resolve", status_code=202, response_model=ActionOut, responses=WRITE, tags=["alerts"]
)
async def resolve(
    request: Request, principal: Operator, fingerprint: Fingerprint, body: ActionIn | None = None
) -> Response:
    return await _act(request, principal, fingerprint, "resolve", body)


def _silence_doc(silence: Silence, now: int) -> dict[str, Any]:
    return msgspec.to_builtins(silence) | {"status": silence_status(silence, now)}


@router.get("/silences", response_model=SilenceList, tags=["silences"])
async def list_silences(request: Request, _: Viewer, include_expired: Annotated[bool, Query()] = False) -> Response:
    now = process_clock().now_us()
    silences = sorted(_api(request).views.silences.by_id.values(), key=lambda s: (-s.created_at, s.silence_id))
    return _json({"items": [_silence_doc(s, now) for s in silences if include_expired or s.ends_at > now]})


def _matching(request: Request, matchers: list[str], where: str = "body") -> list[Any]:
    parsed = parse_matchers(matchers, "matchers", where)
    return _api(request).index.select(AlertQuery(matchers=parsed))


@router.post("/silences/preview", response_model=Preview, tags=["silences"])
async def preview_silence(request: Request, _: Viewer, body: PreviewIn) -> Response:
    """The current alerts a silence with these matchers would mute."""
    return _json({"matching_alerts": _matching(request, body.matchers)})


@router.post("/silences", status_code=201, response_model=SilenceCreated, responses=WRITE, tags=["silences"])
async def create_silence(request: Request, principal: Operator, body: SilenceIn) -> Response:
    """Add a silence (ops.silences.v1, author from the token); the answer previews the alerts it matches."""
    now = process_clock().now_us()
    starts = body.starts_at if body.starts_at is not None else now
    if body.ends_at is not None and body.duration_s is not None:
        raise BadRequest("duration_s", "give ends_at or duration_s, not both", "body")
    if body.ends_at is None and body.duration_s is None:
        raise BadRequest("ends_at", "give ends_at or duration_s", "body")
    ends = body.ends_at if body.ends_at is not None else starts + (body.duration_s or 0) * 1_000_000
    check_silence(body.matchers, starts, ends)
    silence = await _api(request).commands.add_silence(body.matchers, starts, ends, principal.name, body.comment)
    return _json({"silence": _silence_doc(silence, now), "matching_alerts": _matching(request, body.matchers)}, 201)


@router.delete("/silences/{silence_id}", response_model=SilenceCreated, responses=WRITE, tags=["silences"])
async def expire_silence(
    request: Request, principal: Operator, silence_id: Annotated[str, Path(min_length=1, max_length=100)]
) -> Response:
    """End a silence now."""
    api = _api(request)
    silence = api.views.silences.by_id.get(silence_id)
    if silence is None:
        raise NotFound(f"silence_id: no silence {silence_id!r}")
    expired = await api.commands.expire_silence(silence, principal.name)
    return _json({"silence": _silence_doc(expired, process_clock().now_us()), "matching_alerts": []})


@router.get("/anomalies", response_model=AnomalyList, tags=["anomalies"])
async def list_anomalies(
    request: Request,
    _: Viewer,
    kind: Annotated[Literal["anomaly", "forecast"] | None, Query()] = None,
    exchange: Annotated[str | None, Query(max_length=50)] = None,
    symbol: Annotated[str | None, Query(max_length=50)] = None,
    metric: Annotated[str | None, Query(max_length=100)] = None,
    min_score: Annotated[float, Query(ge=0.0, le=1.0)] = 0.0,
    latest_per_series: Annotated[bool, Query(description="only the newest record of each series")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """Recent anomalies and forecasts, newest first, with the related alerts and the runbook's suggested action."""
    views = _api(request).views
    source = views.anomalies.latest.values() if latest_per_series else views.anomalies.recent
    items = []
    for anomaly in sorted(source, key=lambda a: -a.ts_event):
        if (
            (kind is not None and anomaly.kind != kind)
            or (exchange is not None and anomaly.exchange != exchange)
            or (symbol is not None and anomaly.symbol != symbol)
            or (metric is not None and anomaly.metric != metric)
            or anomaly.score < min_score
        ):
            continue
        related = related_alerts(views, anomaly)
        items.append(
            {
                "anomaly": anomaly,
                "related_alerts": [a.fingerprint for a in related],
                "suggested_action": suggested_action(anomaly, related),
            }
        )
        if len(items) >= limit:
            break
    return _json({"items": items})


@router.get("/forecasts", response_model=AnomalyList, tags=["anomalies"])
async def list_forecasts(
    request: Request,
    principal: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Response:
    """The latest failure forecast per series (time to threshold, confidence as ``score``, suggested action)."""
    return await list_anomalies(request, principal, kind="forecast", latest_per_series=True, limit=limit)


@router.get("/anomalies/history", response_model=Rows, responses=UNAVAILABLE, tags=["anomalies"])
async def anomaly_history(
    request: Request,
    _: Viewer,
    series_id: Annotated[str, Query(min_length=1, max_length=300)],
    around: Annotated[int, Query(ge=0, le=2**62, description="epoch microseconds")],
    window_s: Annotated[int, Query(ge=1, le=86_400, description="seconds either side")] = 600,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    """An anomaly series' points from ClickHouse within ``window_s`` of ``around``."""
    span = window_s * 1_000_000
    return await _rows(
        request, ANOMALY_POINTS, ANOMALIES.name, limit, series_id=series_id, start=max(0, around - span),
        end=around + span,
    )  # fmt: skip


@router.get("/venues", response_model=VenueList, tags=["markets"])
async def list_venues(request: Request, _: Viewer) -> Response:
    """Each venue's health score (the lowest of its streams' aggregator scores), streams and firing alerts."""
    views = _api(request).views
    scores = views.feeds.venue_scores()
    firing: dict[str, int] = {}
    for alert in views.alerts.by_fingerprint.values():
        if alert.state in ACTIVE_STATES and (exchange := alert.labels.get("exchange")):
            firing[exchange] = firing.get(exchange, 0) + 1
    items = []
    for exchange in sorted(set(scores) | set(firing)):
        streams = [m for (ex, _s, _src), m in sorted(views.feeds.latest.items()) if ex == exchange]
        items.append(
            {
                "exchange": exchange,
                "health_score": scores.get(exchange),
                "streams": streams,
                "firing_alerts": firing.get(exchange, 0),
            }
        )
    return _json({"items": items})


def _market(views: Any, market: str) -> dict[str, Any]:
    symbol = market.partition(":")[2]
    asset = symbol.split("-")[0] + "-USD"
    return {
        "market": market,
        "bbo": views.markets.bbo.get(market),
        "bar_1s": views.markets.bars.get((market, "1s")),
        "bar_1m": views.markets.bars.get((market, "1m")),
        "reference": views.markets.reference.get(asset),
    }


@router.get("/markets", response_model=MarketList, tags=["markets"])
async def list_markets(
    request: Request, _: Viewer, exchange: Annotated[str | None, Query(max_length=50)] = None
) -> Response:
    """Latest BBO, 1 s and 1 m bar and reference price of every market seen."""
    views = _api(request).views
    markets = [m for m in views.markets.markets() if exchange is None or m.startswith(f"{exchange}:")]
    return _json({"items": [_market(views, m) for m in markets]})


MarketPath = Annotated[str, Path(min_length=1, max_length=50, pattern=r"^[A-Za-z0-9_]+$")]
SymbolPath = Annotated[str, Path(min_length=1, max_length=50, pattern=r"^[A-Z0-9]+-[A-Z0-9]+(-[A-Z0-9]+)*$")]


@router.get("/markets/{exchange}/{symbol}", response_model=MarketList, responses=NOT_FOUND, tags=["markets"])
async def get_market(request: Request, _: Viewer, exchange: MarketPath, symbol: SymbolPath) -> Response:
    views = _api(request).views
    market = f"{exchange}:{symbol}"
    if market not in views.markets.markets():
        raise NotFound(f"symbol: no market {market!r} seen")
    return _json({"items": [_market(views, market)]})


@router.get("/markets/{exchange}/{symbol}/bars", response_model=Rows, responses=UNAVAILABLE, tags=["markets"])
async def market_bars(
    request: Request,
    _: Viewer,
    exchange: MarketPath,
    symbol: SymbolPath,
    start: Annotated[int, Query(ge=0, le=2**62, description="epoch microseconds")],
    end: Annotated[int, Query(ge=0, le=2**62, description="epoch microseconds")],
    interval: Annotated[Literal["1s", "1m"], Query()] = "1m",
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
) -> Response:
    """Bars of a market over ``[start, end)`` (at most 31 days) from ClickHouse."""
    if end <= start:
        raise BadRequest("end", "must be after start")
    if end - start > MAX_RANGE_US:
        raise BadRequest("end", "the range spans at most 31 days")
    return await _rows(
        request, BARS, BAR_TOPICS[interval].name, limit, exchange=exchange, symbol=symbol, start=start, end=end
    )
