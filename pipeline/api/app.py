"""The ASGI application: builds the views, the change feed, the command producer and the routers, and wraps
them in the cross-cutting parts (authentication and roles, rate limit, body limit, security headers, CORS,
request metrics, error shapes). Routes live in ``routes.py`` (``/api/v1``) and ``alertmanager.py``
(``/api/v2``); they only declare the role they need (:func:`require`) and call the service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from pipeline.api.auth import Authenticator, AuthError, Principal, RateLimiter
from pipeline.api.deps import AUTH_FAILURES, ApiState, RateLimited, state_of, viewer
from pipeline.api.events import EventBus
from pipeline.api.service import (
    AlertIndex,
    BadRequest,
    Commands,
    NotFound,
    Unavailable,
    parse_alert_page,
    render_alert_page,
)
from pipeline.api.views import LiveViews, ViewReader
from pipeline.observability.metrics import counter, histogram
from pipeline.settings import Settings

log = logging.getLogger(__name__)

REQUESTS = counter("api_requests_total", "API requests answered", ["route", "status"])
LATENCY = histogram(
    "api_request_seconds", "API request handling time", ["route"], buckets=(0.001, 0.005, 0.02, 0.1, 0.5, 2)
)

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        b"base-uri 'none'; form-action 'self'; frame-ancestors 'none'; object-src 'none'",
    ),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
OPEN_PATHS = ("/healthz", "/readyz")


class EdgeMiddleware:
    """Pure ASGI (streams pass through untouched): request body limit (413), security headers, metrics."""

    def __init__(self, app: ASGIApp, max_body: int):
        self.app = app
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and (not value.isdigit() or int(value) > self.max_body):
                await _plain(send, 413, b'{"detail":"request body too large"}')
                REQUESTS.labels(route="-", status="413").inc()
                return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body:
                    raise _TooLarge
            return message

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message["headers"] = [*message.get("headers", ()), *SECURITY_HEADERS]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_with_headers)
        except _TooLarge:
            await _plain(send, 413, b'{"detail":"request body too large"}')
            status[0] = 413
        finally:
            route = scope.get("route")
            name = getattr(route, "path", "-")
            REQUESTS.labels(route=name, status=str(status[0])).inc()
            LATENCY.labels(route=name).observe(time.perf_counter() - started)


class AlertPages:
    """Answers ``GET /api/v1/alerts`` without FastAPI's parameter and dependency machinery, which costs more
    than the page: a cached page, or one rendered from a query :func:`parse_alert_page` reads; same token check
    (a verified token or an API key; any role reads), same rate limit, same bytes. Everything else (a query it
    does not read, a token that does not verify, a spent rate limit) goes to the application, which answers (and
    refuses) as usual."""

    PATH = "/api/v1/alerts"

    def __init__(self, app: ASGIApp, state: ApiState):
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.PATH and scope["method"] == "GET":
            key = scope["query_string"].decode("latin-1")
            index = self.state.index
            body = index.cached(key)
            parsed = parse_alert_page(key) if body is None else None
            if body is not None or parsed is not None:
                principal = await self._principal(scope)
                if principal is not None and self.state.limiter.take(principal.subject_key) == 0:
                    if parsed is not None:
                        body = render_alert_page(index, key, *parsed)
                    if body is not None:
                        await self._answer(send, body)
                        return
        await self.app(scope, receive, send)

    @staticmethod
    async def _answer(send: Send, body: bytes) -> None:
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _principal(self, scope: Scope) -> Principal | None:
        for name, value in scope["headers"]:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return None
                try:
                    return await self.state.auth.verify(token)
                except AuthError:
                    return None
        return None


class _TooLarge(Exception):
    pass


async def _plain(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *SECURITY_HEADERS]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _field_error(exc: BadRequest) -> dict[str, Any]:
    return {"detail": [{"loc": [exc.where, exc.field], "msg": exc.message, "type": "value_error"}]}


def create_app(settings: Settings, *, read_topics: bool = True, views: LiveViews | None = None) -> FastAPI:
    """The API. ``read_topics=False`` (unit tests) serves the given views without a broker reader."""
    from pipeline.api import alertmanager, console, routes, stream

    api_settings = settings.api
    views = views or LiveViews()
    views.anomalies.recent = type(views.anomalies.recent)(views.anomalies.recent, maxlen=api_settings.recent_anomalies)
    bus = EventBus(queue_size=api_settings.sse_queue)
    state = ApiState(
        settings=settings,
        views=views,
        bus=bus,
        index=AlertIndex(views),
        commands=Commands(settings),
        auth=Authenticator(api_settings),
        limiter=RateLimiter(api_settings.rate_limit_per_s, api_settings.rate_limit_burst),
    )

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        tasks: list[asyncio.Task[None]] = []
        if read_topics:
            await state.commands.start()
            state.reader = ViewReader(settings, views, bus, tail=api_settings.market_tail)
            tasks.append(asyncio.create_task(state.reader.run(stop), name="api-views"))
        tasks.append(asyncio.create_task(stream.health_ticks(state, stop), name="api-health-ticks"))
        log.info("api: serving (%s)", "reading topics" if read_topics else "no topic reader")
        try:
            yield
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await state.commands.stop()
            history = getattr(app.state, "history", None)
            if history is not None:
                history.close()

    app = FastAPI(
        title="MarketPrism operations API",
        version="1.0.0",
        summary="Alerts, silences, anomalies, forecasts, feed health and live market state",
        description="See docs/api.md. Every endpoint but /healthz and /readyz needs a bearer token (JWT or API key).",
        lifespan=lifespan,
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    app.state.api = state

    @app.exception_handler(AuthError)
    async def _auth_error(request: Request, exc: AuthError) -> Response:
        if exc.status == 401:
            AUTH_FAILURES.labels(status="401").inc()
        headers = {"WWW-Authenticate": 'Bearer realm="marketprism"'} if exc.status == 401 else None
        return JSONResponse({"detail": exc.message}, status_code=exc.status, headers=headers)

    @app.exception_handler(RateLimited)
    async def _rate_limited(request: Request, exc: RateLimited) -> Response:
        return JSONResponse(
            {"detail": "rate limit exceeded"}, status_code=429, headers={"Retry-After": str(max(1, round(exc.wait)))}
        )

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest) -> Response:
        return JSONResponse(_field_error(exc), status_code=422)

    @app.exception_handler(Unavailable)
    async def _unavailable(request: Request, exc: Unavailable) -> Response:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "5"})

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound) -> Response:
        return JSONResponse({"detail": str(exc.args[0]) if exc.args else "not found"}, status_code=404)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> Response:
        # FastAPI's shape, without echoing the input back (it could be a secret pasted in the wrong field)
        errors = [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors()]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.get("/healthz", tags=["health"], response_model=routes.Health)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", tags=["health"], response_model=routes.Readiness, responses={503: {"model": routes.Readiness}})
    async def readyz(request: Request) -> Response:
        api = state_of(request)
        reader = api.reader
        ready = reader is None or reader.caught_up.is_set()
        doc = {"ready": ready, "behind": reader.lag if reader else {}, "error": reader.error if reader else None}
        return JSONResponse(doc, status_code=200 if ready else 503)

    @app.get("/metrics", tags=["health"], response_class=Response, responses=routes.AUTH_RESPONSES)
    async def metrics(_: Annotated[Principal, Depends(viewer)]) -> Response:
        return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    app.include_router(routes.router)
    app.include_router(stream.router)
    app.include_router(alertmanager.router)
    console.mount(app)  # the web console at / (docs/console.md): not part of the OpenAPI document
    if api_settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=api_settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"],
            allow_headers=["Authorization", "Content-Type", "Last-Event-ID"],
        )
    app.add_middleware(AlertPages, state=state)
    app.add_middleware(EdgeMiddleware, max_body=api_settings.max_body_bytes)
    return app
