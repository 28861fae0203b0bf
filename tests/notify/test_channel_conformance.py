"""The channel contract, run against every notification channel (as tests/collectors runs one suite over
every venue): each case builds its channel from a config the notifier would parse, pointed at the real
local receiver of tests/notify/receivers.py (HTTP robots and webhooks checking their documented formats, an
SMTP server, the process log).

The contract (pipeline/notify/channels/base.py): ``notify(batch)`` returns ``(retryable, error)``; a
delivered firing or resolved batch gives ``(False, None)`` and exactly one well-formed message naming the
alert; a receiver's temporary failure, or one that cannot be reached, gives ``(True, error)``; an error never
holds a secret of the channel (URL token, signing secret, key, password); ``aclose`` may be called twice.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from email.message import Message
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from pydantic import TypeAdapter

from pipeline.infra import free_port
from pipeline.notify.base import Batch, GroupAlert
from pipeline.notify.channels import CHANNEL_TYPES, Channel, ChannelConfig, build_channel
from tests.notify.conftest import T0, S, alert
from tests.notify.receivers import (
    DINGTALK_SECRET,
    DINGTALK_TOKEN,
    SLACK_PATH,
    WECOM_KEY,
    HttpReceivers,
    MailBox,
    start_http,
)

SMTP_PASSWORD = "SMTP-PASSWORD-1"  # a test credential the errors must not show
RULE = "conformance_rule"


class ScriptedMailBox(MailBox):
    """An SMTP server that answers the next messages with scripted replies (e.g. a 451 temporary failure)."""

    def __init__(self) -> None:
        super().__init__()
        self.replies: list[str] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        if self.replies:
            return self.replies.pop(0)
        return await super().handle_DATA(server, session, envelope)


@dataclass
class Receivers:
    http: HttpReceivers
    mail: ScriptedMailBox
    smtp_port: int
    log: pytest.LogCaptureFixture


@dataclass(frozen=True)
class Case:
    """One channel type: its config against the receivers, how to read what arrived, how to fail it once."""

    kind: str
    config: Callable[[Receivers], dict[str, Any]]
    received: Callable[[Receivers], list[str]]  # every message the receiver accepted, as text
    fail_once: Callable[[Receivers], None] | None  # script one temporary failure; None: the channel cannot fail
    unreachable: Callable[[int], dict[str, Any]] | None  # its config against a port where nothing listens
    secrets: tuple[str, ...] = ()


def _http(name: str) -> Callable[[Receivers], list[str]]:
    return lambda r: [json.dumps(body) for body in r.http.bodies(name)]


def _mails(r: Receivers) -> list[str]:
    return [m.as_string() for m in r.mail.messages if isinstance(m, Message)]


def _logged(r: Receivers) -> list[str]:
    return [rec.getMessage() for rec in r.log.records if rec.name == "pipeline.notify.channels.log"]


def _email(host_port: int, password: bool = True) -> dict[str, Any]:
    return {
        "type": "email",
        "host": "127.0.0.1",
        "port": host_port,
        "from": "mp@example.org",
        "to": ["ops@example.org"],
        "tls": "none",
        "username": "mp" if password else None,
        "password": SMTP_PASSWORD if password else None,
    }


CASES = [
    Case(
        "slack",
        lambda r: {"type": "slack", "url": r.http.url(SLACK_PATH)},
        _http("slack"),
        lambda r: r.http.fail_next("slack", 503),
        lambda port: {"type": "slack", "url": f"http://127.0.0.1:{port}{SLACK_PATH}"},
        ("T000/B000",),
    ),
    Case(
        "dingtalk",
        lambda r: {
            "type": "dingtalk",
            "base_url": r.http.url(""),
            "access_token": DINGTALK_TOKEN,
            "secret": DINGTALK_SECRET,
        },
        _http("dingtalk"),
        lambda r: r.http.fail_next("dingtalk", -1),  # "system busy"
        lambda port: {
            "type": "dingtalk",
            "base_url": f"http://127.0.0.1:{port}",
            "access_token": DINGTALK_TOKEN,
            "secret": DINGTALK_SECRET,
        },
        (DINGTALK_TOKEN, DINGTALK_SECRET),
    ),
    Case(
        "wecom",
        lambda r: {"type": "wecom", "base_url": r.http.url(""), "key": WECOM_KEY},
        _http("wecom"),
        lambda r: r.http.fail_next("wecom", 45009),  # rate limited
        lambda port: {"type": "wecom", "base_url": f"http://127.0.0.1:{port}", "key": WECOM_KEY},
        (WECOM_KEY,),
    ),
    Case(
        "webhook",
        lambda r: {"type": "webhook", "url": r.http.url("/hook/conformance")},
        _http("conformance"),
        lambda r: r.http.fail_next("conformance", 500),
        lambda port: {"type": "webhook", "url": f"http://127.0.0.1:{port}/hook/conformance"},
    ),
    Case(
        "email",
        lambda r: _email(r.smtp_port, password=False),  # aiosmtpd offers no AUTH in clear text
        _mails,
        lambda r: r.mail.replies.append("451 4.3.0 try again later"),
        lambda port: _email(port),
        (SMTP_PASSWORD,),
    ),
    Case("log", lambda r: {"type": "log", "level": "WARNING"}, _logged, None, None),
]


def test_every_channel_type_has_a_case() -> None:
    assert {c.kind for c in CASES} == {cls.kind for cls in CHANNEL_TYPES.values()}  # type: ignore[attr-defined]


def _build(config: dict[str, Any]) -> Channel:
    return build_channel(TypeAdapter(ChannelConfig).validate_python(config))


def _batch(status: str, kind: str) -> Batch:
    record = alert("fp-conf", "resolved" if status == "resolved" else "firing", 0, rule=RULE)
    return Batch(
        receiver="conformance",
        route="root",
        group_key="{}:{alertname=conformance}",
        group_labels={"rule": RULE},
        alerts=(GroupAlert(fingerprint="fp-conf", episode="fp-conf@0", status=status, alert=record),),  # type: ignore[arg-type]
        ts=T0 + S,
        repeat_interval_us=3600 * S,
        integration=kind,
        idempotency_key=f"conformance-{status}",
    )


@pytest.fixture
async def receivers(caplog: pytest.LogCaptureFixture) -> AsyncIterator[Receivers]:
    http, runner = await start_http()
    mail = ScriptedMailBox()
    smtp = Controller(mail, hostname="127.0.0.1", port=free_port())
    smtp.start()
    caplog.set_level(logging.DEBUG, logger="pipeline.notify")
    try:
        yield Receivers(http, mail, smtp.port, caplog)
    finally:
        smtp.stop()
        await runner.cleanup()


def _ids(cases: list[Case]) -> list[str]:
    return [c.kind for c in cases]


@pytest.mark.parametrize("case", CASES, ids=_ids(CASES))
@pytest.mark.parametrize("status", ["firing", "resolved"])
async def test_a_batch_is_delivered_once_and_names_the_alert(case: Case, status: str, receivers: Receivers) -> None:
    channel = _build(case.config(receivers))
    try:
        assert await channel.notify(_batch(status, case.kind)) == (False, None)
    finally:
        await channel.aclose()
        await channel.aclose()
    got = case.received(receivers)
    assert len(got) == 1, got
    assert RULE in got[0] or "fp-conf" in got[0]
    assert receivers.http.violations == []


FAILING = [c for c in CASES if c.fail_once is not None]


@pytest.mark.parametrize("case", FAILING, ids=_ids(FAILING))
async def test_a_temporary_failure_is_retryable_then_the_retry_delivers(case: Case, receivers: Receivers) -> None:
    assert case.fail_once is not None
    case.fail_once(receivers)
    channel = _build(case.config(receivers))
    try:
        retryable, error = await channel.notify(_batch("firing", case.kind))
        assert retryable and error
        assert not any(secret in error for secret in case.secrets), error
        assert await channel.notify(_batch("firing", case.kind)) == (False, None)
    finally:
        await channel.aclose()
    assert receivers.http.violations == []


UNREACHABLE = [c for c in CASES if c.unreachable is not None]


@pytest.mark.parametrize("case", UNREACHABLE, ids=_ids(UNREACHABLE))
async def test_an_unreachable_receiver_is_retryable_and_the_error_holds_no_secret(case: Case) -> None:
    assert case.unreachable is not None
    channel = _build(case.unreachable(free_port()))  # nothing listens there
    try:
        retryable, error = await channel.notify(_batch("firing", case.kind))
    finally:
        await channel.aclose()
    assert retryable and error
    assert not any(secret in error for secret in case.secrets), error
