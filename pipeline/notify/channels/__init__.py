"""Notification channels, one module each: a pydantic config model and a channel class whose
``notify(batch)`` returns ``(retryable, error)`` (``error`` None on success).

``CHANNEL_TYPES`` maps each config model to its channel class (used by the stage builder).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from pipeline.notify.channels.base import Channel
from pipeline.notify.channels.dingtalk import DingTalkChannel, DingTalkConfig
from pipeline.notify.channels.email import EmailChannel, EmailConfig
from pipeline.notify.channels.log import LogChannel, LogConfig
from pipeline.notify.channels.slack import SlackChannel, SlackConfig
from pipeline.notify.channels.webhook import WebhookChannel, WebhookConfig
from pipeline.notify.channels.wecom import WeComChannel, WeComConfig

ChannelConfig = Annotated[
    SlackConfig | DingTalkConfig | WeComConfig | WebhookConfig | EmailConfig | LogConfig,
    Field(discriminator="type"),
]

CHANNEL_TYPES: dict[type, type] = {
    SlackConfig: SlackChannel,
    DingTalkConfig: DingTalkChannel,
    WeComConfig: WeComChannel,
    WebhookConfig: WebhookChannel,
    EmailConfig: EmailChannel,
    LogConfig: LogChannel,
}


def build_channel(config: object) -> Channel:
    """The channel for one config model."""
    channel_cls = CHANNEL_TYPES[type(config)]
    channel: Channel = channel_cls(config)
    return channel


__all__ = ["CHANNEL_TYPES", "Channel", "ChannelConfig", "build_channel"]
