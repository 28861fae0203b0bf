"""What the notifier's parts pass each other: the frozen batch struct, the stage and sink protocols,
the clock, and the package's exceptions.

Exceptions: :class:`NotifyError` is the root; :class:`ConfigError` (the routing/receiver YAML is
invalid: the message names the field) and :class:`ChannelError` (a channel could not build or send
a message; ``retryable`` says whether another attempt may succeed) derive from it.
"""

from __future__ import annotations

from typing import Literal, Protocol

import msgspec

from pipeline.clock import Clock as Clock  # the injected pipeline time (re-exported); tests drive a manual one
from pipeline.clock import SystemClock as SystemClock
from pipeline.contracts import Alert, Notification

MICROS = 1_000_000

AlertStatus = Literal["firing", "flapping", "muted", "resolved"]


class NotifyError(Exception):
    """Root of the notifier's errors."""


class ConfigError(NotifyError):
    """The notifier configuration is invalid."""


class ChannelError(NotifyError):
    """A channel failed to deliver; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, *, retryable: bool):
        super().__init__(message)
        self.retryable = retryable


class GroupAlert(msgspec.Struct, frozen=True, kw_only=True):
    """One alert as a group holds it.

    ``episode`` identifies one firing episode (``fingerprint@fired_at``, plus ``:flapping`` for a
    flapping report): the unit the notification log remembers as announced. ``muted`` means
    acknowledged or silenced: still active, never repeated nor escalated.
    """

    fingerprint: str
    episode: str
    status: AlertStatus
    alert: Alert


class Batch(msgspec.Struct, frozen=True, kw_only=True):
    """One group due for notification, as it flows through the stages.

    ``integration`` (the receiver's channel, e.g. ``slack`` or ``slack#1``) is set by the fan-out;
    ``idempotency_key`` and ``redelivery`` by the dedup stage.
    """

    receiver: str
    route: str
    group_key: str
    group_labels: dict[str, str]
    alerts: tuple[GroupAlert, ...]
    ts: int
    repeat_interval_us: int
    escalation: int = 0
    integration: str = ""
    idempotency_key: str = ""
    # set by the dedup stage when a notifier died between this key's intent and its receipt: the message is sent
    # again under the same key, marked so that a receiver can tell (and an idempotent one drops it)
    redelivery: bool = False

    @property
    def firing(self) -> tuple[GroupAlert, ...]:
        return tuple(a for a in self.alerts if a.status != "resolved")

    @property
    def resolved(self) -> tuple[GroupAlert, ...]:
        return tuple(a for a in self.alerts if a.status == "resolved")

    @property
    def status(self) -> Literal["firing", "resolved"]:
        return "firing" if self.firing else "resolved"

    def common_labels(self) -> dict[str, str]:
        return _common([a.alert.labels for a in self.alerts])

    def common_annotations(self) -> dict[str, str]:
        return _common([a.alert.annotations for a in self.alerts])


def _common(maps: list[dict[str, str]]) -> dict[str, str]:
    if not maps:
        return {}
    first = maps[0]
    return {k: v for k, v in first.items() if all(m.get(k) == v for m in maps[1:])}


class Stage(Protocol):
    """One step of the chain: returns the batch to pass on, or None to stop here."""

    async def exec(self, batch: Batch) -> Batch | None: ...


class ReceiptSink(Protocol):
    """Where receipts and dead letters go (``ops.notifications.v1`` / ``ops.dlq.v1`` in production)."""

    async def receipt(self, notification: Notification) -> None: ...

    async def dead_letter(self, batch: Batch, error: str) -> None: ...
