"""Request dependencies: the application state and the verified principal with its role (routes declare
``Depends(viewer|operator|admin)``; 401 no or bad token, 403 role, 429 rate limit)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from pipeline.api.auth import Authenticator, AuthError, Principal, RateLimiter, Role
from pipeline.api.events import EventBus
from pipeline.api.service import AlertIndex, Commands
from pipeline.api.views import LiveViews, ViewReader
from pipeline.observability.metrics import counter
from pipeline.settings import Settings

AUTH_FAILURES = counter("api_auth_failures_total", "Requests refused by authentication or roles", ["status"])
RATE_LIMITED = counter("api_rate_limited_total", "Requests refused by the per-token rate limit")


@dataclass
class ApiState:
    """Everything a request may use; one per application (``request.app.state.api``)."""

    settings: Settings
    views: LiveViews
    bus: EventBus
    index: AlertIndex
    commands: Commands
    auth: Authenticator
    limiter: RateLimiter
    reader: ViewReader | None = None
    started: float = field(default_factory=time.time)


def state_of(request: Request) -> ApiState:
    api: ApiState = request.app.state.api
    return api


_bearer = HTTPBearer(auto_error=False, description="a JWT or an API key")


def require(role: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the verified principal, refused with 401 (no or bad token), 403 (role) or 429 (rate)."""

    async def dependency(
        request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
    ) -> Principal:
        api = state_of(request)
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            AUTH_FAILURES.labels(status="401").inc()
            raise AuthError(401, "missing bearer token")
        principal = await api.auth.verify(credentials.credentials)
        wait = api.limiter.take(principal.subject_key)
        if wait > 0:
            RATE_LIMITED.inc()
            raise RateLimited(wait)
        if not principal.allows(role):
            AUTH_FAILURES.labels(status="403").inc()
            raise AuthError(403, f"role {principal.role} may not do this (needs {role})")
        request.state.principal = principal
        return principal

    return dependency


viewer = require("viewer")
operator = require("operator")
admin = require("admin")


class RateLimited(Exception):
    def __init__(self, wait: float):
        self.wait = wait
