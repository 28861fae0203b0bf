"""``GET /api/v1/stream``: Server-Sent Events of alert changes, anomalies, silences and health ticks.

Filterable like the alert list (the alert filters apply to ``alert`` events; ``exchange`` also to anomalies
and health ticks), resumable with ``Last-Event-ID`` (:mod:`pipeline.api.events`), a comment line as
heartbeat every ``api.sse_heartbeat_s``; a client that falls ``api.sse_queue`` events behind is dropped.
Frames are plain ``id/event/data`` text, so a server-rendered page can consume them with htmx's SSE
extension or ``EventSource``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Literal

import msgspec
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import StreamingResponse

from pipeline.api.auth import Principal
from pipeline.api.deps import ApiState, state_of, viewer
from pipeline.api.events import StreamEvent
from pipeline.api.routes import AUTH_RESPONSES, alert_query
from pipeline.api.service import AlertQuery
from pipeline.contracts.records import Alert, Anomaly

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", responses=AUTH_RESPONSES)
Kind = Literal["alert", "anomaly", "silence", "health"]
HEALTH_TICK_S = 5.0


def event_filter(kinds: set[str], query: AlertQuery, exchange: str | None, min_score: float):  # type: ignore[no-untyped-def]
    # every version of an alert is sent (so a client sees it leave the filter), not only active ones
    every_state = AlertQuery(
        query.states, query.severities, query.venues, query.rules, query.matchers, query.text, True
    )

    def accepts(event: StreamEvent) -> bool:
        if event.kind not in kinds:
            return False
        record = event.record
        if isinstance(record, Alert):
            return every_state.accepts(record) and (exchange is None or record.labels.get("exchange") == exchange)
        if isinstance(record, Anomaly):
            return record.score >= min_score and (exchange is None or record.exchange == exchange)
        return True

    return accepts


@router.get(
    "/stream",
    tags=["stream"],
    response_class=StreamingResponse,
    responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}},
)
async def stream(
    request: Request,
    _: Annotated[Principal, Depends(viewer)],
    query: Annotated[AlertQuery, Depends(alert_query)],
    kind: Annotated[list[Kind], Query(description="event kinds (default: all)")] = [],  # noqa: B006 - read only
    exchange: Annotated[str | None, Query(max_length=50)] = None,
    min_score: Annotated[float, Query(ge=0.0, le=1.0)] = 0.0,
    last_event_id: Annotated[str | None, Header(max_length=100)] = None,
) -> StreamingResponse:
    api = state_of(request)
    kinds: set[str] = set(kind) or {"alert", "anomaly", "silence", "health"}
    sub = api.bus.subscribe(event_filter(kinds, query, exchange, min_score), last_event_id)
    heartbeat = api.settings.api.sse_heartbeat_s

    async def frames() -> AsyncIterator[bytes]:
        try:
            yield b"retry: 2000\n: connected\n\n"
            while True:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), heartbeat)
                except TimeoutError:
                    if await request.is_disconnected():
                        return
                    yield b": heartbeat\n\n"
                    continue
                yield event.frame
                if event.kind == "dropped":
                    return
        finally:
            api.bus.unsubscribe(sub)

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(frames(), media_type="text/event-stream", headers=headers)


async def health_ticks(api: ApiState, stop: asyncio.Event, every_s: float = HEALTH_TICK_S) -> None:
    """A ``health`` event every ``every_s``: per-venue health scores, view readiness, subscribers."""
    encoder = msgspec.json.Encoder()
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
            return
        except TimeoutError:
            pass
        reader = api.reader
        doc = {
            "venues": api.views.feeds.venue_scores(),
            "ready": reader is None or reader.caught_up.is_set(),
            "alerts_active": sum(
                1 for a in api.views.alerts.by_fingerprint.values() if a.state in ("firing", "acked", "flapping")
            ),
            "subscribers": api.bus.subscribers,
        }
        api.bus.publish("health", doc, encoder.encode(doc))
