"""Dedup stage: decides whether a due group needs a message on one channel (Alertmanager's
``needsUpdate`` over firing episodes) and gives the message its idempotency key.

A message is needed when the group has a firing (or flapping) episode the channel was not told
about, when an episode it was told about resolved (``send_resolved``), or when ``repeat_interval``
has passed since the last message while an unacknowledged episode still fires. The key hashes
(receiver, channel, group, active episodes, resolved episodes, and the previous key for a repeat):
every replica and every restart computes the same key for the same state change, and a key already
settled in the notification log is never sent again (a ``skipped_duplicate`` receipt says so). A key
whose intent is in the log but not its receipt (its notifier died mid-send) is sent again under the
same key, marked as a redelivery: an idempotent receiver (webhook ``Idempotency-Key``) drops it.
"""

from __future__ import annotations

import hashlib
import logging

import msgspec

from pipeline.notify.base import Batch, Clock, ReceiptSink
from pipeline.notify.nflog import Entry, NotificationLog
from pipeline.notify.retry import receipt
from pipeline.observability.metrics import counter

log = logging.getLogger(__name__)

DUPLICATES = counter("notify_duplicates_skipped_total", "Messages skipped because their key was settled", ["channel"])
IN_DOUBT = counter(
    "notify_redeliveries_total", "Messages sent again because a notifier died between intent and receipt", ["channel"]
)


def needs_update(entry: Entry | None, batch: Batch, now: int) -> tuple[bool, bool]:
    """``(send, is_repeat)`` for ``batch`` given the channel's last settled message ``entry``."""
    announce = {a.episode for a in batch.alerts if a.status in ("firing", "flapping")}
    if entry is None:
        return bool(announce), False
    if announce - entry.firing - entry.resolved:  # an episode told resolved is never news again
        return True, False
    resolved = {a.episode for a in batch.alerts if a.status == "resolved"} & entry.firing
    if resolved - entry.resolved:
        return True, False
    unacked = any(a.status == "firing" for a in batch.alerts)
    if unacked and entry.ts + batch.repeat_interval_us <= now:
        return True, True
    return False, False


def idempotency_key(batch: Batch, previous: str | None) -> str:
    active = sorted(a.episode for a in batch.alerts if a.status != "resolved")
    resolved = sorted(a.episode for a in batch.alerts if a.status == "resolved")
    text = "|".join(
        [batch.receiver, batch.integration, batch.group_key, ",".join(active), ",".join(resolved), previous or ""]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


class DedupStage:
    def __init__(self, nflog: NotificationLog, sink: ReceiptSink, clock: Clock, send_resolved: bool):
        self._nflog = nflog
        self._sink = sink
        self._clock = clock
        self._send_resolved = send_resolved

    async def exec(self, batch: Batch) -> Batch | None:
        if not self._send_resolved:
            batch = msgspec.structs.replace(batch, alerts=batch.firing)
        entry = self._nflog.entry(batch.receiver, batch.integration, batch.group_key)
        send, repeat = needs_update(entry, batch, self._clock.now_us())
        if not send:
            return None
        previous = entry.key if repeat and entry is not None else None
        keyed = msgspec.structs.replace(batch, idempotency_key=idempotency_key(batch, previous))
        if self._nflog.settled(keyed.idempotency_key):
            DUPLICATES.labels(channel=batch.integration).inc()
            log.info("%s/%s: %s already settled, skipping", batch.receiver, batch.integration, keyed.idempotency_key)
            await self._sink.receipt(receipt(keyed, "skipped_duplicate", 1, self._clock.now_us(), None, None))
            return None
        if self._nflog.in_doubt(keyed.idempotency_key):
            # a notifier died after announcing this send and before its receipt: the receiver may have it
            IN_DOUBT.labels(channel=batch.integration).inc()
            log.warning(
                "%s/%s: %s was in flight when a notifier stopped; sending it again as a redelivery (same key)",
                batch.receiver,
                batch.integration,
                keyed.idempotency_key,
            )
            keyed = msgspec.structs.replace(keyed, redelivery=True)
        return keyed
