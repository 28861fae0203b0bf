"""WeCom (企业微信) group robot: POST to ``/cgi-bin/webhook/send?key=KEY`` a ``markdown`` message
(``{"msgtype": "markdown", "markdown": {"content"}}``, at most 4096 bytes) or a ``text`` message
(``{"msgtype": "text", "text": {"content", "mentioned_list", "mentioned_mobile_list"}}``, at most 2048
bytes), per WeCom's group-robot docs. WeCom answers ``{"errcode", "errmsg"}``: 0 is success, 45009
(API frequency limit) is retried, any other code is final."""

from __future__ import annotations

import urllib.parse
from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from pipeline.notify.base import Batch
from pipeline.notify.channels.base import ChannelConfigBase, HttpChannel, Result, classify_errcode
from pipeline.notify.templates import DEFAULT_TEXT, DEFAULT_TITLE, render

RETRYABLE_ERRCODES = frozenset({45009, -1})
LIMITS = {"markdown": 4096, "text": 2048}


class WeComConfig(ChannelConfigBase):
    type: Literal["wecom"]
    base_url: str = "https://qyapi.weixin.qq.com"
    key: SecretStr
    msgtype: Literal["markdown", "text"] = "markdown"
    mentioned_list: list[str] = []
    mentioned_mobile_list: list[str] = []


def truncate_bytes(text: str, limit: int) -> str:
    data = text.encode()
    return text if len(data) <= limit else data[:limit].decode(errors="ignore")


class WeComChannel(HttpChannel):
    kind: ClassVar[str] = "wecom"
    config: WeComConfig

    def url(self) -> str:
        query = urllib.parse.urlencode({"key": self.config.key.get_secret_value()})
        return f"{self.config.base_url.rstrip('/')}/cgi-bin/webhook/send?{query}"

    def payload(self, batch: Batch) -> dict[str, Any]:
        title = render(self.config.title or DEFAULT_TITLE, batch)
        body = render(self.config.text or DEFAULT_TEXT, batch)
        if self.config.msgtype == "text":
            return {
                "msgtype": "text",
                "text": {
                    "content": truncate_bytes(f"{title}\n{body}", LIMITS["text"]),
                    "mentioned_list": self.config.mentioned_list,
                    "mentioned_mobile_list": self.config.mentioned_mobile_list,
                },
            }
        color = "warning" if batch.status == "firing" else "info"
        content = f'**<font color="{color}">{title}</font>**\n{body}'
        return {"msgtype": "markdown", "markdown": {"content": truncate_bytes(content, LIMITS["markdown"])}}

    async def notify(self, batch: Batch) -> Result:
        (retryable, error), response = await self.post_json(
            self.url(), self.payload(batch), batch, [self.config.key.get_secret_value()]
        )
        if error is not None or response is None:
            return retryable, error
        return classify_errcode("WeCom", response, RETRYABLE_ERRCODES)
