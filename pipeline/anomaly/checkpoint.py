"""Checkpointing series state: pickled River models, zlib-compressed, in a Faust table.

The table's changelog (a compacted topic Faust creates, ``<app>-<table>-changelog``) is the durable
copy; a restarted worker recovers the table from it and :class:`Checkpointer` restores each series
the first time it sees it again, so a restart does not start series cold. A series is written after
``every`` updates or ``interval_s`` seconds (wall clock, injected for tests), whichever comes first; the
intervals of series first seen together are staggered over one interval.
"""

from __future__ import annotations

import logging
import pickle
import time
import zlib
from collections.abc import Callable, MutableMapping

from pipeline.anomaly.registry import SeriesState
from pipeline.observability.metrics import counter

log = logging.getLogger(__name__)

CHECKPOINTS = counter("anomaly_checkpoints_total", "Series states written to the checkpoint table")
RESTORES = counter("anomaly_restores_total", "Series states restored from a checkpoint", ["result"])


def dumps(state: SeriesState) -> bytes:
    return zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 3)


def loads(blob: bytes) -> SeriesState:
    state = pickle.loads(zlib.decompress(blob))  # noqa: S301 - checkpoints come from the worker's own changelog (issue #20 authenticates them)
    if not isinstance(state, SeriesState):
        raise TypeError(f"checkpoint holds {type(state).__name__}, not SeriesState")
    return state


class Checkpointer:
    """Reads and writes series states in a bytes->bytes mapping (a Faust table in the worker)."""

    def __init__(
        self,
        table: MutableMapping[bytes, bytes],
        every: int = 60,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.table = table
        self.every = every
        self.interval_s = interval_s
        self.clock = clock
        self._written_at: dict[str, float] = {}

    def load(self, series_id: str) -> SeriesState | None:
        blob = self.table.get(series_id.encode())
        if blob is None:
            return None
        try:
            state = loads(blob)
        except (pickle.UnpicklingError, zlib.error, TypeError, EOFError, AttributeError) as exc:
            RESTORES.labels(result="corrupt").inc()
            log.error("checkpoint of %s unreadable (%s); starting it cold", series_id, exc)
            return None
        RESTORES.labels(result="restored").inc()
        self._written_at[series_id] = self.clock()
        log.info("restored %s from its checkpoint (%d points seen)", series_id, state.detector.seen)
        return state

    def _first_sight(self, series_id: str, now: float) -> float:
        """A new series counts as written at a stable per-series phase within the last interval: series first
        seen together (every series of a worker in its first seconds) then reach their interval spread over it,
        instead of all at once every ``interval_s`` (a burst of hundreds of ~13 KiB writes filled Faust's
        producer buffer, which holds the streams until it drains)."""
        phase = (zlib.crc32(series_id.encode()) % 10_000) / 10_000 * self.interval_s
        return self._written_at.setdefault(series_id, now - phase)

    def maybe_save(self, state: SeriesState) -> bool:
        now = self.clock()
        last = self._written_at.get(state.series_id)
        if last is None:
            last = self._first_sight(state.series_id, now)
        if state.updates_since_checkpoint < self.every and now - last < self.interval_s:
            return False
        state.updates_since_checkpoint = 0
        self.table[state.series_id.encode()] = dumps(state)
        self._written_at[state.series_id] = now
        CHECKPOINTS.inc()
        return True
