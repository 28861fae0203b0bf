"""DingTalk custom robot ("自定义机器人"): POST a ``markdown`` (or ``text``) message to
``/robot/send?access_token=...``. With a signing secret (加签) the URL also carries ``timestamp``
(epoch milliseconds) and ``sign`` = urlencode(base64(HMAC-SHA256(key=secret, msg=f"{timestamp}\\n{secret}"))),
as DingTalk's robot security settings describe. DingTalk answers HTTP 200 with ``{"errcode", "errmsg"}``:
``errcode`` 0 is success, 130101 (sending too fast) is retried, any other code is final."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
import urllib.parse
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from pipeline.notify.base import Batch
from pipeline.notify.channels.base import ChannelConfigBase, HttpChannel, Result, classify_errcode
from pipeline.notify.templates import DEFAULT_TEXT, DEFAULT_TITLE, render

RETRYABLE_ERRCODES = frozenset({130101, -1})  # -1: "system busy"


class DingTalkConfig(ChannelConfigBase):
    type: Literal["dingtalk"]
    base_url: str = "https://oapi.dingtalk.com"
    access_token: SecretStr
    secret: SecretStr | None = None  # the robot's signing secret (SEC...)
    msgtype: Literal["markdown", "text"] = "markdown"
    at_mobiles: list[str] = []
    at_all: bool = False


def sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's robot signature (base64 of HMAC-SHA256), not yet URL-encoded."""
    digest = hmac.new(secret.encode(), f"{timestamp_ms}\n{secret}".encode(), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class DingTalkChannel(HttpChannel):
    kind: ClassVar[str] = "dingtalk"
    config: DingTalkConfig

    def url(self, timestamp_ms: int) -> str:
        query = {"access_token": self.config.access_token.get_secret_value()}
        if self.config.secret is not None:
            query |= {"timestamp": str(timestamp_ms), "sign": sign(self.config.secret.get_secret_value(), timestamp_ms)}
        return f"{self.config.base_url.rstrip('/')}/robot/send?{urllib.parse.urlencode(query)}"

    def payload(self, batch: Batch) -> dict[str, Any]:
        title = render(self.config.title or DEFAULT_TITLE, batch)
        body = render(self.config.text or DEFAULT_TEXT, batch)
        at = {"atMobiles": self.config.at_mobiles, "isAtAll": self.config.at_all}
        if self.config.msgtype == "text":
            return {"msgtype": "text", "text": {"content": f"{title}\n{body}"}, "at": at}
        return {"msgtype": "markdown", "markdown": {"title": title, "text": f"### {title}\n\n{body}"}, "at": at}

    async def notify(self, batch: Batch) -> Result:
        secrets = [self.config.access_token.get_secret_value()]
        if self.config.secret is not None:
            secrets.append(self.config.secret.get_secret_value())
        (retryable, error), response = await self.post_json(
            self.url(time.time_ns() // 1_000_000), self.payload(batch), batch, secrets
        )
        if error is not None or response is None:
            return retryable, error
        return classify_errcode("DingTalk", response, RETRYABLE_ERRCODES)
