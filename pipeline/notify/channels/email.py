"""Email over SMTP (aiosmtplib): one plain-text message per notification, subject and body from
templates, ``Message-ID`` derived from the idempotency key (plus an ``X-MarketPrism-Idempotency-Key``
header) so a mail system can drop a duplicate. SMTP 4xx replies and connection errors are retried,
5xx replies are final."""

from __future__ import annotations

import email.utils
from email.message import EmailMessage
from typing import ClassVar, Literal

import aiosmtplib
from pydantic import Field, SecretStr

from pipeline.notify.base import Batch, ChannelError
from pipeline.notify.channels.base import REDELIVERY_HEADER, ChannelConfigBase, Result, redact
from pipeline.notify.templates import DEFAULT_TEXT, DEFAULT_TITLE, render

IDEMPOTENCY_HEADER = "X-MarketPrism-Idempotency-Key"


class EmailConfig(ChannelConfigBase):
    type: Literal["email"]
    host: str
    port: int = Field(default=587, gt=0, lt=65536)
    sender: str = Field(alias="from")
    to: list[str] = Field(min_length=1)
    username: str | None = None
    password: SecretStr | None = None
    use_tls: bool = False  # implicit TLS (port 465)
    start_tls: bool | None = None  # None: upgrade when the server offers STARTTLS


class EmailChannel:
    kind: ClassVar[str] = "email"

    def __init__(self, config: EmailConfig):
        self.config = config

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
        password = self.config.password.get_secret_value() if self.config.password else None
        try:
            await aiosmtplib.send(
                message,
                hostname=self.config.host,
                port=self.config.port,
                username=self.config.username,
                password=password,
                use_tls=self.config.use_tls,
                start_tls=self.config.start_tls,
                timeout=self.config.timeout,
            )
        except aiosmtplib.SMTPResponseException as exc:
            return 400 <= exc.code < 500, redact(f"SMTP {exc.code}: {exc.message}", [password or ""])
        except (aiosmtplib.SMTPException, OSError) as exc:
            return True, redact(f"{type(exc).__name__}: {exc}", [password or ""])
        return False, None
