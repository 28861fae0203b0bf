"""The browser session of the console: a bearer token exchanged at ``/login`` for an HttpOnly, SameSite=Strict
cookie, and the CSRF token every state-changing request must carry.

The cookie holds the token itself (a JWT or an API key): the server keeps no session state, so any API replica
serves any console request, and a session ends when its token expires. The CSRF token is an HMAC of the session
token under a key of the server (derived from ``api.jwt_secret``, or random per process when only API keys are
configured): pages put it in a ``<meta>`` element and in every form, ``console.js`` sends it as the
``X-CSRF-Token`` header on htmx requests, and :func:`require_page` checks it on every POST. The bearer-token API
(``/api/v1``, ``/api/v2``) never reads the cookie, so ambient cookie authority reaches only the console routes,
and only with the CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs

from fastapi import Request

from pipeline.api.auth import AuthError, Principal, Role
from pipeline.api.deps import AUTH_FAILURES, RATE_LIMITED, RateLimited, state_of

COOKIE = "mp_session"
LOGIN_COOKIE = "mp_login"  # the double-submit token of the login form (no session yet)
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf_token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class LoginRequired(Exception):
    """No session (or an expired one): a page answers with a redirect to ``/login``, htmx with ``HX-Redirect``."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


def _key(request: Request) -> bytes:
    app_state = request.app.state
    key: bytes | None = getattr(app_state, "console_key", None)
    if key is None:
        secret = state_of(request).settings.api.jwt_secret
        if secret is not None:
            key = hashlib.sha256(b"marketprism-console-csrf\0" + secret.get_secret_value().encode()).digest()
        else:
            key = secrets.token_bytes(32)
        app_state.console_key = key
    return key


def csrf_token(request: Request, session_token: str) -> str:
    """The CSRF token bound to one session token."""
    return hmac.new(_key(request), b"csrf\0" + session_token.encode(), hashlib.sha256).hexdigest()


def login_token(request: Request, nonce: str) -> str:
    return hmac.new(_key(request), b"login\0" + nonce.encode(), hashlib.sha256).hexdigest()


def new_login_nonce() -> str:
    return secrets.token_urlsafe(24)


async def form_fields(request: Request) -> dict[str, list[str]]:
    """The fields of an ``application/x-www-form-urlencoded`` body (what the pages and htmx send); other bodies
    have none. The body is already bounded by the API's body limit."""
    cached: dict[str, list[str]] | None = getattr(request.state, "form_fields", None)
    if cached is None:
        cached = {}
        if request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            body = (await request.body()).decode("utf-8", errors="replace")
            cached = parse_qs(body, keep_blank_values=True, max_num_fields=1_000)
        request.state.form_fields = cached
    return cached


def secure_cookies(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"


async def session_principal(request: Request) -> tuple[Principal, str]:
    """The principal of the session cookie and the CSRF token of the session; :class:`LoginRequired` without one."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired("please log in")
    try:
        principal = await state_of(request).auth.verify(token)
    except AuthError as exc:
        AUTH_FAILURES.labels(status="401").inc()
        raise LoginRequired(f"session ended: {exc.message}") from None
    return principal, csrf_token(request, token)


def require_page(role: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency for console routes: the session's principal with ``role`` (403 otherwise); on a POST the
    request's CSRF token (header or form field) must be the session's (403 otherwise). Rate-limited per token."""

    async def dependency(request: Request) -> Principal:
        api = state_of(request)
        principal, expected = await session_principal(request)
        wait = api.limiter.take(principal.subject_key)
        if wait > 0:
            RATE_LIMITED.inc()
            raise RateLimited(wait)
        if request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER)
            if sent is None:
                sent = (await form_fields(request)).get(CSRF_FIELD, [None])[0]
            if not sent or not hmac.compare_digest(sent, expected):
                AUTH_FAILURES.labels(status="403").inc()
                raise AuthError(403, "missing or wrong CSRF token (reload the page)")
        if not principal.allows(role):
            AUTH_FAILURES.labels(status="403").inc()
            raise AuthError(403, f"role {principal.role} may not do this (needs {role})")
        request.state.principal = principal
        request.state.csrf = expected
        return principal

    return dependency


page_viewer = require_page("viewer")
page_operator = require_page("operator")
