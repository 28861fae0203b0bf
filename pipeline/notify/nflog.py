"""The notification log: what each receiver's channel was last told about each group, and every
idempotency key already settled (delivered or dead-lettered), and the keys a notifier was sending
(an intent receipt written before the first attempt) with no settled receipt: in doubt after a crash.

It is rebuilt from ``ops.notifications.v1`` at start (every replica also tails the topic), so a
restarted or second notifier knows what was already sent. A receipt is the only way in:
:meth:`observe` takes the notifier's own receipts and those read back from the topic alike.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.contracts import Notification

SETTLED = ("sent", "dead_lettered")
INTENT = "sending"


@dataclass(frozen=True)
class Entry:
    """The last settled message of one (receiver, channel, group)."""

    firing: frozenset[str]
    resolved: frozenset[str]
    ts: int
    key: str


class NotificationLog:
    def __init__(self) -> None:
        self._settled: set[str] = set()
        self._intents: set[str] = set()
        self._entries: dict[tuple[str, str, str], Entry] = {}

    def observe(self, notification: Notification) -> None:
        if notification.status == INTENT:
            self._intents.add(notification.idempotency_key)
            return
        if notification.status not in SETTLED:
            return
        self._settled.add(notification.idempotency_key)
        slot = (notification.receiver, notification.channel, notification.group_key)
        current = self._entries.get(slot)
        if current is None or notification.ts >= current.ts:
            self._entries[slot] = Entry(
                frozenset(notification.firing),
                frozenset(notification.resolved),
                notification.ts,
                notification.idempotency_key,
            )

    def entry(self, receiver: str, channel: str, group_key: str) -> Entry | None:
        return self._entries.get((receiver, channel, group_key))

    def settled(self, key: str) -> bool:
        return key in self._settled

    def in_doubt(self, key: str) -> bool:
        """Whether a notifier announced it was sending ``key`` and no settled receipt followed: it died
        between its intent and its receipt, so the receiver may or may not have the message."""
        return key in self._intents and key not in self._settled

    def __len__(self) -> int:
        return len(self._settled)
