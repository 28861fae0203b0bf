"""Email over SMTP (aiosmtplib): one plain-text message per notification, subject and body from
templates, ``Message-ID`` derived from the idempotency key (plus an ``X-MarketPrism-Idempotency-Key``
header) so a mail system can drop a duplicate. SMTP 4xx replies and connection errors are retried,
5xx replies are final.

TLS is required by default (``tls: starttls``: the session is upgraded before any credential is sent, and a
server that does not offer STARTTLS gets nothing; ``tls: implicit`` for port 465). Certificates are verified
(``ca_file`` for a private CA). ``tls: none`` sends in clear and is logged as a warning: use it only for a relay
on loopback. A message that cannot be built (a CR/LF in a subject rendered from an alert: header injection)
is refused as final, never sent."""

from __future__ import annotations

import email.utils
import logging
from email.message import EmailMessage
from pathlib import Path
from typing import ClassVar, Literal

import aiosmtplib
from pydantic import Field, SecretStr

from pipeline.notify.base import Batch, ChannelError
from pipeline.notify.channels.base import REDELIVERY_HEADER, ChannelConfigBase, Result, redact
from pipeline.notify.templates import DEFAULT_TEXT, DEFAULT_TITLE, render

log = logging.getLogger(__name__)

IDEMPOTENCY_HEADER = "X-MarketPrism-Idempotency-Key"


class EmailConfig(ChannelConfigBase):
    type: Literal["email"]
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    # starttls: upgrade before authenticating, refuse a server without STARTTLS; implicit: TLS from the first byte
    # (port 465); none: clear text (a warning at start; only for a relay on loopback)
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    ca_file: Path | None = None  # CA bundle for a server certificate from a private CA


class EmailChannel:
    kind: ClassVar[str] = "email"

    def __init__(self, config: EmailConfig):
        self.config = config
        if config.tls == "none":
            log.warning(
                "email channel to %s:%d has tls: none: messages%s travel in clear",
                config.host,
                config.port,
                " and the SMTP password" if config.password else "",
            )

    async def aclose(self) -> None:
        return None

    def message(self, batch: Batch) -> EmailMessage:
        message = EmailMessage()
        message["Subject"] = render(self.config.title or DEFAULT_TITLE, batch)
        message["From"] = self.config.sender
        message["To"] = ", ".join(self.config.to)
        message["Date"] = email.utils.formatdate(batch.ts / 1_000_000, usegmt=True)
        message["Message-ID"] = f"<{batch.idempotency_key}@marketprism>"
        message[IDEMPOTENCY_HEADER] = batch.idempotency_key
        if batch.redelivery:  # the same Message-ID: mail clients that thread by it show one message
            message[REDELIVERY_HEADER] = "true"
        message.set_content(render(self.config.text or DEFAULT_TEXT, batch) + "\n")
        return message

    async def notify(self, batch: Batch) -> Result:
        try:
            message = self.message(batch)
        except ChannelError as exc:
            return exc.retryable, str(exc)
        except Exception as exc:  # e.g. a CR/LF in a header value: building is deterministic, so final, never sent
            return False, f"message refused: {type(exc).__name__}: {exc}"
        password = self.config.password.get_secret_value() if self.config.password else None
        try:
            await aiosmtplib.send(
                message,
                hostname=self.config.host,
                port=self.config.port,
                username=self.config.username,
                password=password,
                use_tls=self.config.tls == "implicit",
                start_tls=self.config.tls == "starttls",
                cert_bundle=str(self.config.ca_file) if self.config.ca_file else None,
                timeout=self.config.timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return 400 <= exc.code < 500, redact(f"SMTP {exc.code}: {exc.message}", [password or ""])
        except (aiosmtplib.SMTPException, OSError) as exc:
            return True, redact(f"{type(exc).__name__}: {exc}", [password or ""])
        return False, None
