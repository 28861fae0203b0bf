"""The console's routes: pages (full documents), fragments (what htmx swaps in), actions (POST, operator role and
CSRF token, see :mod:`session`) and ``/events`` (the change feed as Server-Sent Events for the page, on the
session cookie). Each route declares its role and hands the work to the service, the views or :mod:`pages`.
None of these routes is part of the API's OpenAPI document.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from fastapi.templating import Jinja2Templates

from pipeline.api.auth import AuthError, Principal
from pipeline.api.console import charts, pages, series
from pipeline.api.console.session import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_COOKIE,
    LoginRequired,
    form_fields,
    login_token,
    new_login_nonce,
    page_operator,
    page_viewer,
    secure_cookies,
)
from pipeline.api.deps import AUTH_FAILURES, ApiState, state_of
from pipeline.api.events import StreamEvent
from pipeline.api.history import ALERT_NOTIFICATIONS, ALERT_TRANSITIONS, History, HistoryUnavailable
from pipeline.api.service import (
    AlertQuery,
    BadRequest,
    NotFound,
    check_silence,
    related_alerts,
    silence_status,
    silencing,
    suggested_action,
)
from pipeline.clock import process_clock
from pipeline.contracts.records import Alert
from pipeline.contracts.topics import ALERTS, NOTIFICATIONS

__all__ = ["LoginRequired", "login_required", "router"]

log = logging.getLogger(__name__)

templates = Jinja2Templates(directory=Path(__file__).with_name("templates"))  # autoescape on for .html
templates.env.globals.update(when=pages.when, duration=pages.duration, severities=pages.SEVERITIES)
templates.env.filters["num"] = pages.number

router = APIRouter(include_in_schema=False)
Viewer = Annotated[Principal, Depends(page_viewer)]
Operator = Annotated[Principal, Depends(page_operator)]
ACTIONS = ("ack", "unack", "resolve")
DURATIONS = {"30m": 1800, "1h": 3600, "2h": 7200, "4h": 14400, "1d": 86400, "7d": 604800}


def _render(request: Request, name: str, principal: Principal | None, status: int = 200, **context: Any) -> Response:
    context |= {
        "principal": principal,
        "can_act": principal is not None and principal.allows("operator"),
        "csrf": getattr(request.state, "csrf", ""),
        "csrf_field": CSRF_FIELD,
        "path": request.url.path,
    }
    return templates.TemplateResponse(request, name, context, status_code=status)


def _field(fields: dict[str, list[str]], name: str, max_length: int) -> str:
    """One form field (the first value), refused with a 422 naming it when longer than ``max_length``."""
    value = fields.get(name, [""])[0]
    if len(value) > max_length:
        raise BadRequest(name, f"at most {max_length} characters", "body")
    return value


def _is_htmx(request: Request) -> bool:
    return request.headers.get("hx-request") == "true"


async def login_required(request: Request, exc: Exception) -> Response:
    """No or expired session: back to the login page (htmx follows ``HX-Redirect``; a POST gets 401)."""
    message = exc.message if isinstance(exc, LoginRequired) else "please log in"
    if _is_htmx(request):
        return Response(status_code=401, headers={"HX-Redirect": "/login"})
    if request.method != "GET" or request.url.path == "/events":
        return Response(message, status_code=401, media_type="text/plain")
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    response = RedirectResponse(f"/login?next={target}", status_code=303)
    return response


# -- login -------------------------------------------------------------------------------------------------


def _next(target: str | None) -> str:
    """Only a local path may be the target after login (no open redirect)."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _login_page(request: Request, error: str | None, target: str, status: int = 200) -> Response:
    nonce = new_login_nonce()
    response = _render(
        request, "login.html", None, status, error=error, login_csrf=login_token(request, nonce), next=target
    )
    response.set_cookie(
        LOGIN_COOKIE, nonce, httponly=True, samesite="strict", secure=secure_cookies(request), max_age=3600
    )
    return response


@router.get("/login")
async def login_page(request: Request, next: Annotated[str | None, Query(max_length=2000)] = None) -> Response:
    return _login_page(request, None, _next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """Exchange a bearer token (JWT or API key) for the session cookie; the form carries a double-submit token."""
    fields = await form_fields(request)
    token = _field(fields, "token", 8000)
    login_csrf = _field(fields, "login_csrf", 200)
    next = _field(fields, "next", 2000) or "/"
    nonce = request.cookies.get(LOGIN_COOKIE, "")
    if not token.strip():
        return _login_page(request, "paste a token", _next(next), 400)
    if not nonce or not hmac.compare_digest(login_csrf, login_token(request, nonce)):
        AUTH_FAILURES.labels(status="403").inc()
        return _login_page(request, "the login form expired: try again", _next(next), 403)
    try:
        principal = await state_of(request).auth.verify(token.strip())
    except AuthError as exc:
        AUTH_FAILURES.labels(status="401").inc()
        return _login_page(request, exc.message, _next(next), 401)
    log.info("console: %s (%s) logged in", principal.name, principal.role)
    response = RedirectResponse(_next(next), status_code=303)
    response.set_cookie(COOKIE, token.strip(), httponly=True, samesite="strict", secure=secure_cookies(request))
    response.delete_cookie(LOGIN_COOKIE)
    return response


@router.post("/logout")
async def logout(request: Request, _: Viewer) -> Response:
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE)
    return response


# -- overview ----------------------------------------------------------------------------------------------


def _overview(api: ApiState) -> dict[str, Any]:
    return pages.overview(api.views, api.reader, process_clock().now_us())


@router.get("/")
async def overview_page(request: Request, principal: Viewer) -> Response:
    return _render(request, "overview.html", principal, data=_overview(state_of(request)))


@router.get("/fragments/overview")
async def overview_fragment(request: Request, principal: Viewer) -> Response:
    return _render(request, "_overview.html", principal, data=_overview(state_of(request)))


# -- alerts ------------------------------------------------------------------------------------------------


def _filters(
    state: list[str], severity: list[str], matchers: str | None, q: str | None, group: str | None, touched: bool
) -> pages.AlertFilters:
    filters = pages.AlertFilters()
    if touched or state:  # a submitted form with no state box ticked means "any state"
        filters.states = [s for s in state if s in pages.STATES]
    filters.severities = [s for s in severity if s in pages.SEVERITIES]
    filters.matchers = matchers or ""
    filters.text = q or ""
    filters.group = group if group in pages.GROUPINGS or (group and group.isidentifier()) else "rule"
    return filters


async def alert_filters(
    state: Annotated[list[str], Query(max_length=10)] = [],  # noqa: B006 - FastAPI reads the default
    severity: Annotated[list[str], Query(max_length=4)] = [],  # noqa: B006
    matchers: Annotated[str | None, Query(max_length=2000)] = None,
    q: Annotated[str | None, Query(max_length=200)] = None,
    group: Annotated[str | None, Query(max_length=100)] = None,
    f: Annotated[str | None, Query(max_length=1, description="set by the filter form")] = None,
) -> pages.AlertFilters:
    return _filters(state, severity, matchers, q, group, f is not None)


Filters = Annotated[pages.AlertFilters, Depends(alert_filters)]


def _alert_context(request: Request, filters: pages.AlertFilters) -> dict[str, Any]:
    api = state_of(request)
    query = filters.query()
    if not filters.states:
        query = AlertQuery(
            query.states, query.severities, query.venues, query.rules, query.matchers, query.text, include_inactive=True
        )
    selected = api.index.select(query)
    now = process_clock().now_us()
    return {
        "filters": filters,
        "groups": pages.alert_groups(selected[:500], filters),
        "total": len(selected),
        "shown": min(len(selected), 500),
        "states": pages.STATES,
        "groupings": pages.GROUPINGS,
        "now": now,
        "ago": pages.ago,
        "query": request.url.query,
    }


@router.get("/alerts")
async def alerts_page(request: Request, principal: Viewer, filters: Filters) -> Response:
    return _render(request, "alerts.html", principal, **_alert_context(request, filters))


@router.get("/fragments/alerts")
async def alerts_fragment(request: Request, principal: Viewer, filters: Filters) -> Response:
    return _render(request, "_alerts.html", principal, **_alert_context(request, filters))


def _alert(api: ApiState, fingerprint: str) -> Alert:
    alert = api.views.alerts.by_fingerprint.get(fingerprint)
    if alert is None:
        raise NotFound(f"fingerprint: no alert {fingerprint!r}")
    return alert


async def _act(request: Request, principal: Principal, fingerprints: list[str], action: str, comment: str) -> int:
    api = state_of(request)
    alerts = [_alert(api, fp) for fp in fingerprints]
    for alert in alerts:
        await api.commands.alert_action(alert.fingerprint, action, principal.name, comment or None)
    return len(alerts)


def _done(request: Request, message: str) -> Response:
    """After an action: htmx gets a status line (the list refreshes from the stream); a plain form a redirect."""
    if _is_htmx(request):
        return HTMLResponse(f'<p class="flash" role="status">{_escape(message)}</p>')
    return RedirectResponse(request.headers.get("referer") or "/alerts", status_code=303)


def _escape(text: str) -> str:
    from markupsafe import escape

    return str(escape(text))


@router.post("/alerts/bulk")
async def bulk_action(request: Request, principal: Operator) -> Response:
    """Acknowledge, resolve or silence the selected alerts (silence: one silence per alert, its labels)."""
    fields = await form_fields(request)
    action = _field(fields, "action", 20)
    fingerprint = [fp[:200] for fp in fields.get("fingerprint", [])][:500]
    comment = _field(fields, "comment", 1000)
    if not fingerprint:
        raise BadRequest("fingerprint", "select at least one alert", "body")
    if action == "silence":
        return RedirectResponse("/silences/new?" + "&".join(f"from={fp}" for fp in fingerprint[:20]), status_code=303)
    if action not in ACTIONS:
        raise BadRequest("action", f"one of {[*ACTIONS, 'silence']}", "body")
    count = await _act(request, principal, fingerprint, action, comment)
    return _done(request, f"{action}: {count} alert(s) sent to the rule engine")


@router.post("/alerts/{fingerprint}/{action}")
async def alert_action(request: Request, principal: Operator, fingerprint: str, action: str) -> Response:
    comment = _field(await form_fields(request), "comment", 1000)
    if action not in ACTIONS:
        raise NotFound(f"action: no action {action!r}")
    await _act(request, principal, [fingerprint], action, comment)
    return _done(request, f"{action}: {fingerprint} sent to the rule engine")


def _history(request: Request) -> History:
    api = state_of(request)
    history: History | None = getattr(request.app.state, "history", None)
    if history is None:
        history = request.app.state.history = History(api.settings.clickhouse_url, api.settings.topic_prefix)
    return history


@router.get("/alerts/{fingerprint}")
async def alert_page(request: Request, principal: Viewer, fingerprint: str) -> Response:
    api = state_of(request)
    alert = _alert(api, fingerprint)
    now = process_clock().now_us()
    history_error = None
    transitions: list[dict[str, Any]] = []
    notifications: list[dict[str, Any]] = []
    try:
        transitions = (await _history(request).rows(ALERT_TRANSITIONS, ALERTS.name, 500, fingerprint=fingerprint)).rows
        notifications = (
            await _history(request).rows(ALERT_NOTIFICATIONS, NOTIFICATIONS.name, 500, fingerprint=fingerprint)
        ).rows
    except HistoryUnavailable as exc:
        history_error = str(exc)
    chart, chart_note = await _alert_chart(api, alert, transitions, now)
    return _render(
        request,
        "alert.html",
        principal,
        labels=sorted(alert.labels.items()),
        annotations=sorted((k, v) for k, v in alert.annotations.items() if k != "runbook_url"),
        timeline=pages.timeline(transitions, notifications, [alert]),
        history_error=history_error,
        chart=chart,
        chart_note=chart_note,
        now=now,
        ago=pages.ago,
        **_head(api, alert, now),
    )


@router.get("/fragments/alerts/{fingerprint}/head")
async def alert_head_fragment(request: Request, principal: Viewer, fingerprint: str) -> Response:
    """The alert's state, facts and actions (re-read on every alert change while the detail page is open)."""
    api = state_of(request)
    alert = _alert(api, fingerprint)
    now = process_clock().now_us()
    return _render(request, "_alert_head.html", principal, now=now, **_head(api, alert, now))


def _head(api: ApiState, alert: Alert, now: int) -> dict[str, Any]:
    return {
        "alert": alert,
        "runbook": pages.safe_link(alert.annotations.get("runbook_url")),
        "runbook_text": alert.annotations.get("runbook_url") or f"docs/operations.md#{alert.rule.lower()}",
        "silenced_by": silencing(api.views, alert, now),
    }


async def _alert_chart(
    api: ApiState, alert: Alert, transitions: list[dict[str, Any]], now: int
) -> tuple[charts.Chart, str]:
    """The triggering series read back from its topic (shipped threshold rules), else the alert's own values."""
    windows = pages.firing_windows(alert, [], now)
    leaf = pages.rule_leaf(alert.rule)
    if leaf is not None:
        try:
            points = await pages.leaf_series(api.settings, leaf, alert)
        except series.SeriesError as exc:
            points, note = [], f"series not read: {exc}"
        else:
            note = f"{leaf.source} {leaf.metric} from the topic's recent records ({len(points)} points)"
        if points:
            title = f"{leaf.metric} {leaf.op} {leaf.value:g}"
            return charts.series_chart(title, points, threshold=leaf.value, windows=windows), note
    values = [charts.Point(int(r["ts_event"]), float(r["value"])) for r in transitions if r.get("value") is not None]
    if alert.value is not None and not any(p.ts_us == alert.ts_event for p in values):
        values.append(charts.Point(alert.ts_event, alert.value))
    values.sort(key=lambda p: p.ts_us)
    note = "the values the rule engine evaluated at each transition"
    return charts.series_chart("alert value", values, threshold=pages.threshold_of(alert), windows=windows), note


# -- silences ----------------------------------------------------------------------------------------------


def _silences(api: ApiState, include_expired: bool) -> list[dict[str, Any]]:
    now = process_clock().now_us()
    out = []
    for silence in sorted(api.views.silences.by_id.values(), key=lambda s: (-s.created_at, s.silence_id)):
        status = silence_status(silence, now)
        if include_expired or status != "expired":
            out.append({"s": silence, "status": status, "ends_in": pages.duration((silence.ends_at - now) / 1e6)})
    return out


@router.get("/silences")
async def silences_page(request: Request, principal: Viewer, expired: Annotated[bool, Query()] = False) -> Response:
    api = state_of(request)
    return _render(request, "silences.html", principal, silences=_silences(api, expired), expired=expired)


@router.get("/silences/new")
async def new_silence_page(
    request: Request,
    principal: Operator,
    from_: Annotated[list[str], Query(alias="from", max_length=20)] = [],  # noqa: B006 - FastAPI reads the default
) -> Response:
    api = state_of(request)
    sources = [_alert(api, fp) for fp in from_]
    matcher_sets = [pages.silence_matchers(a) for a in sources] or [[]]
    preview = _preview(api, "\n".join(matcher_sets[0])) if matcher_sets[0] else None
    return _render(
        request,
        "silence_new.html",
        principal,
        matcher_sets=matcher_sets,
        sources=sources,
        durations=DURATIONS,
        preview=preview,
    )


def _preview(api: ApiState, text: str) -> dict[str, Any]:
    matchers = pages.split_matchers(text)
    try:
        check_silence(matchers, 0, 1)
        parsed = pages.parse_matchers(matchers, "matchers", "body")
    except BadRequest as exc:
        return {"error": exc.message, "alerts": [], "matchers": matchers}
    alerts = api.index.select(AlertQuery(matchers=parsed))
    return {"error": None, "alerts": alerts[:50], "total": len(alerts), "matchers": matchers}


@router.get("/silences/preview")
async def silence_preview(
    request: Request, principal: Viewer, matchers: Annotated[str, Query(max_length=5000)] = ""
) -> Response:
    """The current alerts the typed matchers would mute (read only)."""
    return _render(request, "_preview.html", principal, preview=_preview(state_of(request), matchers))


@router.post("/silences")
async def create_silence(request: Request, principal: Operator) -> Response:
    """One silence per matcher set (a bulk silence from several alerts sends several), author = the session."""
    api = state_of(request)
    fields = await form_fields(request)
    matchers = [m[:5000] for m in fields.get("matchers", [])][:20]
    duration = _field(fields, "duration", 10) or "2h"
    comment = _field(fields, "comment", 1000)
    if not matchers:
        raise BadRequest("matchers", "at least one matcher is needed", "body")
    seconds = DURATIONS.get(duration)
    if seconds is None:
        raise BadRequest("duration", f"one of {list(DURATIONS)}", "body")
    now = process_clock().now_us()
    created = []
    for text in matchers:
        parsed = pages.split_matchers(text)
        check_silence(parsed, now, now + seconds * 1_000_000)
        silence = await api.commands.add_silence(parsed, now, now + seconds * 1_000_000, principal.name, comment)
        created.append(silence.silence_id)
    if _is_htmx(request):
        return Response(status_code=204, headers={"HX-Redirect": "/silences"})
    return RedirectResponse("/silences", status_code=303)


@router.post("/silences/{silence_id}/expire")
async def expire_silence(request: Request, principal: Operator, silence_id: str) -> Response:
    api = state_of(request)
    silence = api.views.silences.by_id.get(silence_id)
    if silence is None:
        raise NotFound(f"silence_id: no silence {silence_id!r}")
    await api.commands.expire_silence(silence, principal.name)
    return _done(request, f"silence {silence_id} expired")


@router.get("/fragments/silences")
async def silences_fragment(request: Request, principal: Viewer, expired: Annotated[bool, Query()] = False) -> Response:
    api = state_of(request)
    return _render(request, "_silences.html", principal, silences=_silences(api, expired), expired=expired)


# -- anomalies and forecasts -------------------------------------------------------------------------------


def _anomaly_chart(api: ApiState, series_id: str) -> charts.Chart | None:
    """The reported anomalies of one series (values and scores) from the recent window of the live view."""
    found = sorted((a for a in api.views.anomalies.recent if a.series_id == series_id), key=lambda a: a.ts_event)
    if not found:
        return None
    return charts.series_chart(
        f"{series_id}: reported",
        [charts.Point(a.ts_event, a.value) for a in found],
        band=[(a.ts_event, a.lower, a.upper) for a in found if a.lower is not None and a.upper is not None],
        markers=[(a.ts_event, a.value, f"score {a.score:.2f} ({a.detector})") for a in found],
        scores=[(a.ts_event, a.score) for a in found],
    )


@router.get("/anomalies")
async def anomalies_page(
    request: Request,
    principal: Viewer,
    series_id: Annotated[str | None, Query(max_length=300)] = None,
) -> Response:
    api = state_of(request)
    views = api.views
    recent = sorted((a for a in views.anomalies.recent if a.kind == "anomaly"), key=lambda a: -a.ts_event)[:100]
    rows = [(a, suggested_action(a, related_alerts(views, a))) for a in recent]
    known = series.known_series(views)
    chosen = series_id or (recent[0].series_id if recent else (known[0] if known else ""))
    return _render(
        request,
        "anomalies.html",
        principal,
        rows=rows,
        known=known,
        chosen=chosen,
        chart=_anomaly_chart(api, chosen) if chosen else None,
        settings=series.ReplaySettings(),
        detectors=series.DETECTORS,
    )


@router.get("/anomalies/replay")
async def anomaly_replay(
    request: Request,
    principal: Viewer,
    series_id: Annotated[str, Query(min_length=1, max_length=300)],
    minutes: Annotated[int, Query(ge=1, le=1440)] = 30,
    warmup: Annotated[int, Query(ge=0, le=5000)] = 150,
    report_floor: Annotated[float, Query(gt=0.0, lt=1.0)] = 0.475,
    z_half: Annotated[float, Query(gt=0.0, le=100.0)] = 5.0,
    refractory: Annotated[int, Query(ge=0, le=10_000)] = 100,
    min_effect: Annotated[str, Query(max_length=30, description="blank: the metric's policy")] = "",
    detector: Annotated[list[str], Query(max_length=4)] = [],  # noqa: B006 - FastAPI reads the default
) -> Response:
    """Replay a fresh detector with these settings over the series' recent values (a fragment with the chart)."""
    api = state_of(request)
    chosen = tuple(d for d in series.DETECTORS if d in detector) or series.DETECTORS
    effect: float | None = None
    if min_effect.strip():
        try:
            effect = float(min_effect)
        except ValueError:
            raise BadRequest("min_effect", "a number, or blank for the metric's policy") from None
        if not 0.0 <= effect < 1e12:
            raise BadRequest("min_effect", "must be 0 or more")
    settings = series.ReplaySettings(warmup, report_floor, z_half, refractory, effect, chosen)
    try:
        source = series.parse_series(series_id)
        points = series.in_range(await series.read_series(api.settings, series_id), minutes)
    except series.SeriesError as exc:
        return _render(request, "_replay.html", principal, error=str(exc), replay=None, chart=None)
    if not points:
        missing = "no values of this series in the topic's recent records"
        return _render(request, "_replay.html", principal, error=missing, replay=None, chart=None)
    result = await asyncio.to_thread(series.replay, series_id, source.metric, points, settings)
    live = {a.ts_event for a in api.views.anomalies.recent if a.series_id == series_id and a.kind == "anomaly"}
    chart = charts.series_chart(
        f"{series_id}: replay",
        [charts.Point(p.ts_event, p.value) for p in result.points],
        band=[
            (p.ts_event, lo, hi) for p, (lo, hi) in zip(result.points, result.bands, strict=True)
            if lo is not None and hi is not None
        ],
        markers=[
            (result.points[n].ts_event, result.points[n].value,
             f"score {result.scores[n]:.2f} ({result.detectors[n]})")
            for n in result.flagged
        ],
        scores=[(p.ts_event, s) for p, s in zip(result.points, result.scores, strict=True)],
        score_floor=settings.report_floor,
    )  # fmt: skip
    both = sum(1 for n in result.flagged if result.points[n].ts_event in live)
    return _render(
        request, "_replay.html", principal, error=None, replay=result, chart=chart, live=len(live), both=both
    )


@router.get("/forecasts")
async def forecasts_page(request: Request, principal: Viewer) -> Response:
    views = state_of(request).views
    latest = [a for a in views.anomalies.latest.values() if a.kind == "forecast"]
    items = []
    for forecast in latest:
        related = related_alerts(views, forecast)
        items.append((forecast, related, suggested_action(forecast, related)))
    return _render(request, "forecasts.html", principal, rows=pages.forecast_rows(items))


# -- live updates ------------------------------------------------------------------------------------------


@router.get("/events")
async def events(request: Request, _: Viewer) -> StreamingResponse:
    """The change feed for the page (htmx's SSE extension): one frame per alert, silence, anomaly or health
    event, named by its kind, carrying no data the page needs (elements re-fetch their fragment on it)."""
    api = state_of(request)
    sub = api.bus.subscribe(lambda e: e.kind in ("alert", "silence", "anomaly", "health"))
    heartbeat = api.settings.api.sse_heartbeat_s

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n: connected\n\n"
            while True:
                try:
                    event: StreamEvent = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": heartbeat\n\n"
                    continue
                if event.kind == "dropped":
                    return  # the browser reconnects (retry) and re-reads the fragments
                yield b"event: " + event.kind.encode() + b"\ndata: " + event.id.encode() + b"\n\n"
        finally:
            api.bus.unsubscribe(sub)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)
