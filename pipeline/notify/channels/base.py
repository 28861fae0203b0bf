"""What every channel shares: the config base (resolved messages, rate limit, template overrides,
timeout), the channel protocol, the one HTTP status classifier and a JSON POST helper that never
puts a secret (webhook URL, token, signature) into an error or a log line."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any, ClassVar, Protocol

import httpx
import jinja2
from pydantic import BaseModel, ConfigDict, SecretStr, field_validator

from pipeline.notify.base import Batch
from pipeline.notify.durations import Seconds
from pipeline.notify.ratelimit import RateLimitConfig
from pipeline.notify.templates import compile_template

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "Idempotency-Key"
REDELIVERY_HEADER = "X-MarketPrism-Redelivery"  # "true" on a message sent again after a crash left it in doubt
RETRYABLE_STATUS = frozenset({408, 425, 429})

Result = tuple[bool, str | None]
"""``(retryable, error)``: ``error`` is None when the message was delivered."""


class ChannelConfigBase(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    send_resolved: bool = True
    rate_limit: RateLimitConfig | None = None
    title: str | None = None  # template overriding the channel's default title/subject
    text: str | None = None  # template overriding the channel's default body
    timeout: Seconds = 10.0

    @field_validator("title", "text")
    @classmethod
    def _compiles(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                compile_template(value)
            except jinja2.TemplateSyntaxError as exc:
                raise ValueError(f"template does not compile: {exc}") from exc
        return value


class Channel(Protocol):
    kind: ClassVar[str]
    config: ChannelConfigBase

    async def notify(self, batch: Batch) -> Result: ...

    async def aclose(self) -> None: ...


def classify_status(status: int, body: str) -> Result:
    """Alertmanager's rule (notify/util.go): 2xx delivered; 5xx, 408, 425 and 429 worth retrying;
    any other status final."""
    if 200 <= status < 300:
        return False, None
    retryable = status >= 500 or status in RETRYABLE_STATUS
    return retryable, f"HTTP {status}: {body[:200]}"


def classify_errcode(vendor: str, response: httpx.Response, retryable_codes: frozenset[int]) -> Result:
    """The rule of the chat robots answering ``{"errcode", "errmsg"}`` (DingTalk, WeCom): errcode 0
    delivered, one of ``retryable_codes`` worth retrying, any other final; a body that is not such JSON is
    retried."""
    try:
        answer = response.json()
        code = int(answer.get("errcode", -2))
    except (ValueError, AttributeError):
        return True, f"{vendor} answered a non-JSON body: {response.text[:200]}"
    if code == 0:
        return False, None
    return code in retryable_codes, f"{vendor} errcode {code}: {answer.get('errmsg', '')}"


def channel_secrets(channel: object) -> list[str]:
    """Every secret value of a channel's config (its ``SecretStr`` fields), to redact from errors."""
    config = getattr(channel, "config", None)
    if not isinstance(config, BaseModel):
        return []
    return [v.get_secret_value() for v in config.__dict__.values() if isinstance(v, SecretStr) and v.get_secret_value()]


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "<redacted>")
    return text


class HttpChannel:
    """Base of the HTTP channels: one pooled httpx client per channel."""

    kind: ClassVar[str] = "http"

    def __init__(self, config: ChannelConfigBase):
        self.config = config
        self._client = httpx.AsyncClient(timeout=config.timeout, follow_redirects=False)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def post_json(
        self, url: str, payload: dict[str, Any], batch: Batch, secrets: Iterable[str] = ()
    ) -> tuple[Result, httpx.Response | None]:
        """POST ``payload``; returns the classified result and the response (None on transport errors)."""
        headers = {IDEMPOTENCY_HEADER: batch.idempotency_key}
        if batch.redelivery:
            headers[REDELIVERY_HEADER] = "true"
        try:
            response = await self._client.post(url, json=payload, headers=headers)
        except httpx.HTTPError as exc:
            hidden = [url, *secrets]
            return (True, redact(f"{type(exc).__name__}: {exc}", hidden)), None
        return classify_status(response.status_code, redact(response.text, [url, *secrets])), response
