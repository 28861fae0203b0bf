"""Checkpoints of the bar worker's partitions: where partition states live (:class:`StateStore`: the Faust
table, a dict in unit tests) and when each is written (:class:`Checkpoints`).

A partition's state is written at most once per ``interval_us`` (it is the costly part: the whole partition
state, dedup ids included); the records applied to it are held and released for commit only after a write
that covers them, so the committed offset never passes the state. A write the broker did not acknowledge
releases nothing; the next close retries.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Protocol

log = logging.getLogger(__name__)


class StateStore(Protocol):
    """Where partition states live (the Faust table; a dict in unit tests)."""

    async def load(self, partitions: Sequence[int]) -> dict[int, bytes | None]: ...

    async def save(self, states: dict[int, bytes]) -> bool:
        """Write partition states; True once every one is acknowledged by the broker."""
        ...


class Checkpoints:
    """Held releases and last-write times per partition, and the writes themselves."""

    def __init__(self, store: StateStore, interval_us: int):
        self.store = store
        self.interval_us = interval_us
        self._held: dict[int, list[Callable[[], object]]] = {}  # partition -> releases of applied records
        self._saved_at: dict[int, int] = {}  # partition -> clock of its last checkpoint

    def hold(self, partition: int, release: Callable[[], object]) -> None:
        """Keep ``release`` (marks one applied record safe to commit) until a write covers the partition."""
        self._held.setdefault(partition, []).append(release)

    def due(self, partition: int, changed: bool, now: int) -> bool:
        """Whether the partition's state is to be written now: it changed (or holds records) and its interval
        since the last write has passed."""
        changed = changed or partition in self._held
        return changed and now - self._saved_at.get(partition, -self.interval_us) >= self.interval_us

    def forget(self, partition: int) -> None:
        """A revoked partition: its held records are never released (the next owner re-reads them)."""
        self._held.pop(partition, None)
        self._saved_at.pop(partition, None)

    async def save(self, states: dict[int, bytes], now: int) -> bool:
        """Write ``states``; once acknowledged, release what they cover. False (and nothing released) if not."""
        if await self.store.save(states):
            for partition in states:
                self._saved_at[partition] = now
                for release in self._held.pop(partition, ()):
                    release()
            return True
        log.error("partition state(s) %s not written; records stay uncommitted", list(states))
        return False
