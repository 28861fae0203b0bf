"""Log channel: writes the rendered notification to the process log (for demos and as a fallback
receiver). It always succeeds."""

from __future__ import annotations

import logging
from typing import ClassVar, Literal

from pipeline.notify.base import Batch, ChannelError
from pipeline.notify.channels.base import ChannelConfigBase, Result
from pipeline.notify.templates import DEFAULT_TEXT, DEFAULT_TITLE, render

log = logging.getLogger(__name__)


class LogConfig(ChannelConfigBase):
    type: Literal["log"]
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "WARNING"


class LogChannel:
    kind: ClassVar[str] = "log"

    def __init__(self, config: LogConfig):
        self.config = config

    async def aclose(self) -> None:
        return None

    async def notify(self, batch: Batch) -> Result:
        try:
            title = render(self.config.title or DEFAULT_TITLE, batch)
            body = render(self.config.text or DEFAULT_TEXT, batch)
        except ChannelError as exc:
            return exc.retryable, str(exc)
        log.log(logging.getLevelName(self.config.level), "[%s] %s\n%s", batch.receiver, title, body)
        return False, None
