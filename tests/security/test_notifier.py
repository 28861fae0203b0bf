"""The notifier's hardening: SMTP requires TLS before any credential leaves (a server without STARTTLS never sees
the password), certificates verified against a CA; a channel that raises is retried a bounded number of times and
dead-lettered; an alert that decodes but cannot be delivered (header injection) is dead-lettered by the running
notifier process, which goes on and delivers the next alert."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import msgspec
import pytest
import yaml
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

from pipeline.contracts import Notification
from pipeline.infra import free_port
from pipeline.kafka.clients import make_record_producer
from pipeline.notify.base import Batch
from pipeline.notify.channels.email import EmailChannel, EmailConfig
from pipeline.notify.config import parse_config
from pipeline.notify.nflog import NotificationLog
from pipeline.notify.notifier import Notifier
from pipeline.notify.retry import RetryConfig, RetryStage
from pipeline.settings import Settings
from tests.conftest import read_records
from tests.notify.conftest import ManualClock, MemorySink, alert, no_sleep
from tests.notify.receivers import MailBox
from tests.security.conftest import Pki, component, dead_letters, make_pki

PASSWORD = "smtp-pa55word-planted"


class Authenticator:
    """Records every AUTH the server receives (and whether the session was TLS by then)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, bool]] = []

    def __call__(self, server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            self.seen.append((auth_data.password.decode(), session.ssl is not None))
        return AuthResult(success=True)


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


def smtp_server(pki: Pki | None, auth: Authenticator) -> tuple[MailBox, Controller]:
    box = MailBox()
    options: dict[str, Any] = {"authenticator": auth, "auth_require_tls": pki is not None}
    if pki is not None:
        options |= {"tls_context": pki.server_context(), "require_starttls": True}
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), **options)
    controller.start()
    return box, controller


@pytest.fixture
def servers() -> Iterator[list[Controller]]:
    started: list[Controller] = []
    yield started
    for controller in started:
        controller.stop()


def email(port: int, **extra: Any) -> EmailChannel:
    config = {"type": "email", "host": "127.0.0.1", "port": port, "from": "mp@example.org", "to": ["sre@example.org"]}
    return EmailChannel(EmailConfig.model_validate(config | {"username": "mp", "password": PASSWORD} | extra))


def batch(rule: str = "feed_stalled") -> Batch:
    config = parse_config({"route": {"receiver": "r", "group_wait": 0}, "receivers": [{"name": "r"}]})
    clock = ManualClock()
    notifier = Notifier(config, MemorySink(NotificationLog()), NotificationLog(), clock)
    notifier.on_alert(alert("fp1", "firing", 0, rule=rule))
    [(_, due)] = notifier.dispatcher.due()
    return msgspec.structs.replace(due, idempotency_key="k1", integration="email")


async def test_a_server_without_starttls_never_gets_the_password(servers: list[Controller]) -> None:
    auth = Authenticator()
    box, controller = smtp_server(None, auth)  # offers no STARTTLS, would accept AUTH in clear
    servers.append(controller)
    retryable, error = await email(controller.port).notify(batch())  # default tls: starttls
    assert error is not None and "STARTTLS" in error and retryable
    assert auth.seen == [] and box.messages == []
    assert PASSWORD not in error


async def test_starttls_with_a_verified_certificate_delivers(pki: Pki, servers: list[Controller]) -> None:
    auth = Authenticator()
    box, controller = smtp_server(pki, auth)
    servers.append(controller)
    unverified = await email(controller.port).notify(batch())  # the system CAs do not know the test CA
    assert unverified[1] is not None and auth.seen == [] and box.messages == []
    _, error = await email(controller.port, ca_file=str(pki.ca)).notify(batch())
    assert error is None, error
    assert auth.seen == [(PASSWORD, True)]  # the password crossed only inside TLS
    assert len(box.messages) == 1


async def test_tls_none_is_explicit_and_warned(servers: list[Controller], caplog: pytest.LogCaptureFixture) -> None:
    auth = Authenticator()
    box, controller = smtp_server(None, auth)
    servers.append(controller)
    with caplog.at_level(logging.WARNING, logger="pipeline.notify.channels.email"):
        channel = email(controller.port, tls="none")
    assert any("tls: none" in r.getMessage() and "SMTP password" in r.getMessage() for r in caplog.records)
    assert PASSWORD not in caplog.text
    assert (await channel.notify(batch()))[1] is None and len(box.messages) == 1


async def test_a_subject_with_cr_lf_is_refused_as_final(servers: list[Controller]) -> None:
    auth = Authenticator()
    box, controller = smtp_server(None, auth)
    servers.append(controller)
    retryable, error = await email(controller.port, tls="none").notify(batch("x\r\nBcc: attacker@example.org"))
    assert not retryable and error is not None and "message refused" in error
    assert box.messages == []


class Exploding:
    """A channel whose every call raises something that is not a ChannelError (a bug, a library surprise),
    with a secret in the message."""

    kind: ClassVar[str] = "exploding"

    def __init__(self) -> None:
        self.config = EmailConfig.model_validate(
            {"type": "email", "host": "h", "from": "a@b", "to": ["c@d"], "password": PASSWORD}
        )
        self.calls = 0

    async def notify(self, batch: Batch) -> tuple[bool, str | None]:
        self.calls += 1
        raise RuntimeError(f"boom with {PASSWORD}")

    async def aclose(self) -> None:
        return None


async def test_a_channel_that_raises_is_retried_bounded_then_dead_lettered() -> None:
    sink = MemorySink(NotificationLog())
    channel = Exploding()
    stage = RetryStage(channel, RetryConfig(attempts=3, initial=0.001, max=0.001), sink, ManualClock(), no_sleep)
    assert await stage.exec(batch()) is None
    assert channel.calls == 3
    assert [n.status for n in sink.intents + sink.receipts] == ["sending", "retrying", "retrying", "dead_lettered"]
    assert len(sink.dead) == 1
    errors = [n.error or "" for n in sink.receipts] + [error for _, error in sink.dead]
    assert any("RuntimeError" in e for e in errors) and not any(PASSWORD in e for e in errors)


async def test_notifier_process_dead_letters_a_poison_alert_and_delivers_the_next(
    topics: Settings, tmp_path: Path, servers: list[Controller]
) -> None:
    auth = Authenticator()
    box, controller = smtp_server(None, auth)
    servers.append(controller)
    routes = tmp_path / "notify.yaml"
    mail = {"type": "email", "host": "127.0.0.1", "port": controller.port, "from": "mp@example.org"}
    config = {
        "route": {"receiver": "mail", "group_by": ["fp"], "group_wait": 0, "group_interval": "1s"},
        "receivers": [{"name": "mail", "channels": [mail | {"to": ["sre@example.org"], "tls": "none"}]}],
        "retry": {"attempts": 3, "initial": "10ms", "max": "50ms"},
    }
    routes.write_text(yaml.safe_dump(config))
    producer = make_record_producer(topics.kafka, topics.topic_prefix)
    await producer.start()
    try:
        with component(topics, tmp_path / "notify.log", "notify", "--routes", str(routes)) as proc:
            evil = alert("evil", "firing", 0, rule="feed_stalled\r\nBcc: attacker@example.org", version=1)
            await producer.send("ops.alerts.v1", b"evil", evil)
            await producer.send("ops.alerts.v1", b"good", alert("good", "firing", 1, version=1))
            await producer.flush()
            letters = await dead_letters(
                topics, lambda got: any(d.source == "notify" and "evil" in d.payload for d in got), timeout_s=120
            )
            async with asyncio.timeout(120):
                while not box.messages and proc.poll() is None:  # noqa: ASYNC110 - another thread's mailbox
                    await asyncio.sleep(0.2)
            alive = proc.poll() is None
    finally:
        await producer.stop()
    log = (tmp_path / "notify.log").read_text(errors="replace")
    assert alive, log[-3000:]
    assert [m["Subject"] for m in box.messages] == ["[FIRING:1] feed_stalled"]
    [letter] = [d for d in letters if d.source == "notify"]
    assert letter.reason == "delivery_failed" and "message refused" in letter.error
    receipts = await read_records(topics, "ops.notifications.v1", Notification)
    evil_receipts = [r.status for r in receipts if "evil" in r.fingerprints]
    assert evil_receipts == ["sending", "dead_lettered"]  # final at once: a malformed header never gets better
