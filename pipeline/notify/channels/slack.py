"""Slack incoming webhook: POST ``{"text", "blocks"}`` to the webhook URL (Slack "Sending messages
using incoming webhooks"). ``text`` is the notification fallback, the body goes in one ``section``
block of ``mrkdwn`` (Slack caps a section's text at 3000 characters). Slack answers ``200 ok``;
``429`` carries ``Retry-After`` and is retried."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import SecretStr

from pipeline.notify.base import Batch
from pipeline.notify.channels.base import ChannelConfigBase, HttpChannel, Result
from pipeline.notify.templates import DEFAULT_TEXT, DEFAULT_TITLE, render

SECTION_LIMIT = 3000


class SlackConfig(ChannelConfigBase):
    type: Literal["slack"]
    url: SecretStr  # https://hooks.slack.com/services/T000/B000/XXXX (a secret: never logged)
    channel: str | None = None
    username: str | None = None
    icon_emoji: str | None = None


class SlackChannel(HttpChannel):
    kind: ClassVar[str] = "slack"
    config: SlackConfig

    def payload(self, batch: Batch) -> dict[str, Any]:
        title = render(self.config.title or DEFAULT_TITLE, batch)
        body = render(self.config.text or DEFAULT_TEXT, batch) or title
        payload: dict[str, Any] = {
            "text": title,
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": title[:150]}},
                {"type": "section", "text": {"type": "mrkdwn", "text": body[:SECTION_LIMIT]}},
            ],
        }
        for key in ("channel", "username", "icon_emoji"):
            if (value := getattr(self.config, key)) is not None:
                payload[key] = value
        return payload

    async def notify(self, batch: Batch) -> Result:
        result, _ = await self.post_json(self.config.url.get_secret_value(), self.payload(batch), batch)
        return result
