"""Real local receivers standing in for Slack, DingTalk, WeCom, a webhook and an SMTP server.

Each HTTP endpoint checks the payload its venue documents (and DingTalk's signature) and records
what it got; a request that breaks the venue's format is answered 400 and listed in
``violations``. ``fail_next`` scripts answers (status codes) for the next requests.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import Message
from typing import Any

from aiohttp import web
from aiosmtpd.controller import Controller

from pipeline.infra import free_port

SLACK_PATH = "/services/T000/B000/slack"
DINGTALK_TOKEN = "ding-token"
DINGTALK_SECRET = "SECdingsecret"
WECOM_KEY = "wecom-key"


@dataclass
class Received:
    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    at: float  # time.monotonic() on arrival


@dataclass
class HttpReceivers:
    port: int = 0
    got: dict[str, list[Received]] = field(default_factory=lambda: defaultdict(list))
    violations: list[str] = field(default_factory=list)
    scripted: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    on_accept: dict[str, Callable[[], None]] = field(default_factory=dict)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def fail_next(self, name: str, *statuses: int) -> None:
        self.scripted[name].extend(statuses)

    def bodies(self, name: str) -> list[dict[str, Any]]:
        return [r.body for r in self.got[name]]

    def processed(self, name: str) -> list[Received]:
        """What a receiver honouring ``Idempotency-Key`` acts on: the first request of each key."""
        seen: set[str] = set()
        out = []
        for received in self.got[name]:
            key = received.headers.get("Idempotency-Key", "")
            if key not in seen:
                seen.add(key)
                out.append(received)
        return out

    def _scripted(self, name: str) -> int | None:
        return self.scripted[name].pop(0) if self.scripted[name] else None

    def _bad(self, name: str, problem: str) -> web.Response:
        self.violations.append(f"{name}: {problem}")
        return web.json_response({"error": problem}, status=400)

    def _errcode_answer(self, name: str, request: web.Request, body: dict[str, Any]) -> web.Response:
        """Record a well-formed robot message and answer as DingTalk and WeCom do (a scripted errcode, else 0)."""
        self.got[name].append(Received(request.path, body, dict(request.headers), time.monotonic()))
        if (status := self._scripted(name)) is not None:
            return web.json_response({"errcode": status, "errmsg": "scripted"})
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def slack(self, request: web.Request) -> web.Response:
        body = await request.json()
        if not isinstance(body.get("text"), str) or not body["text"]:
            return self._bad("slack", "text missing")
        for block in body.get("blocks", []):
            if block.get("type") == "section" and len(block["text"]["text"]) > 3000:
                return self._bad("slack", "section text over 3000 characters")
            if block["text"].get("type") not in ("mrkdwn", "plain_text"):
                return self._bad("slack", f"bad text object {block['text']}")
        self.got["slack"].append(Received(request.path, body, dict(request.headers), time.monotonic()))
        if (status := self._scripted("slack")) is not None:
            return web.Response(status=status, text="rate_limited" if status == 429 else "error")
        return web.Response(text="ok")

    async def dingtalk(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("access_token") != DINGTALK_TOKEN:
            return web.json_response({"errcode": 300001, "errmsg": "token is not exist"})
        timestamp = query.get("timestamp", "")
        if not timestamp.isdigit() or abs(int(timestamp) - time.time() * 1000) > 3600_000:
            return self._bad("dingtalk", "timestamp missing or more than 1 hour off")
        expected = base64.b64encode(
            hmac.new(DINGTALK_SECRET.encode(), f"{timestamp}\n{DINGTALK_SECRET}".encode(), hashlib.sha256).digest()
        ).decode()
        if query.get("sign") != expected:  # aiohttp already URL-decoded the query
            self.violations.append("dingtalk: bad signature")
            return web.json_response({"errcode": 310000, "errmsg": "sign not match"})
        body = await request.json()
        if body.get("msgtype") == "markdown":
            if not body["markdown"].get("title") or not body["markdown"].get("text"):
                return self._bad("dingtalk", "markdown needs title and text")
        elif body.get("msgtype") == "text":
            if not body["text"].get("content"):
                return self._bad("dingtalk", "text needs content")
        else:
            return self._bad("dingtalk", f"unknown msgtype {body.get('msgtype')}")
        return self._errcode_answer("dingtalk", request, body)

    async def wecom(self, request: web.Request) -> web.Response:
        if request.query.get("key") != WECOM_KEY:
            return web.json_response({"errcode": 93000, "errmsg": "invalid webhook url"})
        body = await request.json()
        kind = body.get("msgtype")
        if kind == "markdown":
            content = body["markdown"].get("content", "")
            limit = 4096
        elif kind == "text":
            content = body["text"].get("content", "")
            limit = 2048
        else:
            return self._bad("wecom", f"unknown msgtype {kind}")
        if not content or len(content.encode()) > limit:
            return self._bad("wecom", f"{kind} content empty or over {limit} bytes")
        return self._errcode_answer("wecom", request, body)

    async def webhook(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        body = await request.json()
        required = {"version", "groupKey", "truncatedAlerts", "status", "receiver", "groupLabels", "commonLabels"}
        required |= {"commonAnnotations", "externalURL", "alerts"}
        if missing := required - set(body):
            return self._bad(name, f"missing {sorted(missing)}")
        for alert in body["alerts"]:
            keys = {"status", "labels", "annotations", "startsAt", "endsAt", "generatorURL", "fingerprint"}
            if missing := keys - set(alert):
                return self._bad(name, f"alert missing {sorted(missing)}")
            if alert["status"] not in ("firing", "resolved"):
                return self._bad(name, f"alert status {alert['status']}")
        self.got[name].append(Received(request.path, body, dict(request.headers), time.monotonic()))
        if (hook := self.on_accept.get(name)) is not None:
            hook()  # e.g. SIGKILL the notifier after the receiver accepted, before it sees the answer
        if (status := self._scripted(name)) is not None:
            return web.Response(status=status, text="scripted failure")
        return web.Response(text="ok")

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(SLACK_PATH, self.slack)
        app.router.add_post("/robot/send", self.dingtalk)
        app.router.add_post("/cgi-bin/webhook/send", self.wecom)
        app.router.add_post("/hook/{name}", self.webhook)
        return app


async def start_http() -> tuple[HttpReceivers, web.AppRunner]:
    receivers = HttpReceivers(port=free_port())
    runner = web.AppRunner(receivers.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receivers.port).start()
    return receivers, runner


class MailBox:
    """aiosmtpd handler keeping every message it accepts."""

    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: object, session: object, envelope: Any) -> str:
        self.messages.append(message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
        return "250 Message accepted for delivery"


def start_smtp() -> tuple[MailBox, Controller]:
    box = MailBox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    return box, controller
