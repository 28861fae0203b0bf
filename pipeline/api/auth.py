"""Who is calling: bearer tokens verified into a :class:`Principal` (name and role), and token minting.

A bearer token is either a JWT or a static API key:

- JWT, HS256 with ``api.jwt_secret`` (what ``marketprism api token`` issues), or RS256/ES256 verified against
  the JWKS at ``api.jwks_url`` (an OIDC provider's keys, selected by ``kid``). ``exp``, ``nbf``, ``aud`` and
  ``iss`` are always checked; the name is ``sub``, the role the ``role`` claim (or the highest known role
  in a ``roles`` list).
- API key: looked up by its SHA-256 digest in ``api.api_keys`` (the settings hold only digests).

Errors (:class:`AuthError`) say what is wrong without echoing the token, a key or the secret.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

import jwt

from pipeline.settings import ApiSettings

Role = Literal["viewer", "operator", "admin"]
ROLES: tuple[Role, ...] = ("viewer", "operator", "admin")
RANK = {role: n for n, role in enumerate(ROLES)}
ASYMMETRIC = ("RS256", "ES256")
VERIFIED_CACHE = 10_000  # verified tokens remembered until their expiry


class AuthError(Exception):
    """401 (no or bad credentials) or 403 (valid credentials, insufficient role)."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: Role
    via: Literal["jwt", "api_key"]
    subject_key: str  # what the rate limit counts under: the JWT's name, or the API key's name

    def allows(self, role: Role) -> bool:
        return RANK[self.role] >= RANK[role]


def key_digest(key: str) -> str:
    """The SHA-256 hex digest of an API key, as the settings store it."""
    return hashlib.sha256(key.encode()).hexdigest()


def new_api_key() -> str:
    return "mpk_" + secrets.token_urlsafe(32)


class Authenticator:
    def __init__(self, api: ApiSettings):
        self.api = api
        self._verified: dict[bytes, tuple[Principal, float]] = {}  # token digest -> (principal, exp)
        self._keys = {k.sha256.get_secret_value().lower(): (name, k.role) for name, k in api.api_keys.items()}
        self._jwks: jwt.PyJWKClient | None = None
        self._jwk_set: jwt.PyJWKSet | None = None  # a JWKS file (file://), read once
        if api.jwks_url and api.jwks_url.startswith("file://"):
            path = Path(unquote(urlsplit(api.jwks_url).path))
            self._jwk_set = jwt.PyJWKSet.from_json(path.read_text())
        elif api.jwks_url:
            self._jwks = jwt.PyJWKClient(api.jwks_url, cache_keys=True, lifespan=300)

    async def verify(self, token: str) -> Principal:
        """The principal a bearer token stands for; raises :class:`AuthError` (401) when it does not verify.

        A verified JWT is remembered (bounded, by its digest) until its ``exp``: a console or a dashboard
        sends the same token with every request, and verifying it again costs more than the request."""
        if token.count(".") == 2:
            digest = hashlib.sha256(token.encode()).digest()
            cached = self._verified.get(digest)
            if cached is not None and time.time() < cached[1]:
                return cached[0]
            principal, expires = await self._verify_jwt(token)
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.clear()
            self._verified[digest] = (principal, expires)
            return principal
        found = self._lookup_key(token)
        if found is None:
            raise AuthError(401, "invalid token")
        name, role = found
        return Principal(name, role, "api_key", f"key:{name}")

    def _lookup_key(self, token: str) -> tuple[str, Role] | None:
        digest = key_digest(token)
        for stored, found in self._keys.items():
            if hmac.compare_digest(stored, digest):
                return found
        return None

    async def _jwks_key(self, token: str, kid: object, alg: str) -> Any:
        if self._jwk_set is not None:
            for jwk in self._jwk_set.keys:
                if jwk.key_id == kid:
                    return jwk.key
            raise AuthError(401, "token key not found in the JWKS")
        if self._jwks is None:
            raise AuthError(401, f"{alg} tokens are not accepted (no api.jwks_url configured)")
        try:  # the client fetches (and caches) the JWKS with blocking I/O: off the event loop
            return (await asyncio.to_thread(self._jwks.get_signing_key_from_jwt, token)).key
        except jwt.PyJWKClientError as exc:
            raise AuthError(401, f"token key not found in the JWKS: {_reason(exc)}") from None

    async def _verify_jwt(self, token: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise AuthError(401, "malformed token") from None
        alg = header.get("alg")
        key: Any
        if alg == "HS256":
            if self.api.jwt_secret is None:
                raise AuthError(401, "HS256 tokens are not accepted (no api.jwt_secret configured)")
            key = self.api.jwt_secret.get_secret_value()
        elif alg in ASYMMETRIC:
            key = await self._jwks_key(token, header.get("kid"), alg)
        else:
            raise AuthError(401, "token algorithm not accepted (HS256, RS256, ES256)")
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                audience=self.api.jwt_audience,
                issuer=self.api.jwt_issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
                leeway=5,
            )
        except jwt.ExpiredSignatureError:
            raise AuthError(401, "token expired") from None
        except jwt.ImmatureSignatureError:
            raise AuthError(401, "token not valid yet (nbf)") from None
        except jwt.PyJWTError as exc:
            raise AuthError(401, f"invalid token: {_reason(exc)}") from None
        role = _role_of(claims)
        if role is None:
            raise AuthError(403, "token carries no known role (viewer, operator, admin)")
        name = str(claims["sub"])
        return Principal(name, role, "jwt", f"jwt:{name}"), float(claims["exp"])


def _reason(exc: Exception) -> str:
    """PyJWT's messages name the failing claim and never include the token or key; keep them short."""
    return str(exc)[:200]


def _role_of(claims: dict[str, Any]) -> Role | None:
    role = claims.get("role")
    if isinstance(role, str) and role in RANK:
        return cast(Role, role)
    roles = claims.get("roles")
    if isinstance(roles, list):
        known = [r for r in roles if isinstance(r, str) and r in RANK]
        if known:
            return cast(Role, max(known, key=RANK.__getitem__))
    return None


def mint(api: ApiSettings, name: str, role: Role, ttl_s: int | None = None, now: float | None = None) -> str:
    """An HS256 token for ``name`` with ``role``, valid ``ttl_s`` (default ``api.token_ttl_s``)."""
    if api.jwt_secret is None:
        raise ValueError("api.jwt_secret is not set (MARKETPRISM_API__JWT_SECRET): cannot issue HS256 tokens")
    if role not in RANK:
        raise ValueError(f"role must be one of {list(ROLES)}")
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": name,
        "role": role,
        "iss": api.jwt_issuer,
        "aud": api.jwt_audience,
        "iat": issued,
        "nbf": issued,
        "exp": issued + (ttl_s if ttl_s is not None else api.token_ttl_s),
        "jti": secrets.token_hex(8),
    }
    return jwt.encode(claims, api.jwt_secret.get_secret_value(), algorithm="HS256")


class RateLimiter:
    """A token bucket per principal: ``rate`` requests a second, bursts up to ``burst``."""

    def __init__(self, rate: float, burst: int, clock: Any = time.monotonic):
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # key -> (tokens, at)

    def take(self, key: str) -> float:
        """0 when a request may go ahead, else the seconds until it may (``Retry-After``)."""
        now = self.clock()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            self._buckets[key] = (tokens - 1.0, now)
            return 0.0
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > 100_000:  # bounded: forget the idle ones
            self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < 60}
        return (1.0 - tokens) / self.rate
