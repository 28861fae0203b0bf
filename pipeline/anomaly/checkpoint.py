"""Checkpointing series state: pickled River models, zlib-compressed and sealed, in a Faust table.

Anyone able to write the changelog could plant a pickle that runs code when loaded, so a checkpoint is
sealed (:mod:`pipeline.kafka.sealed`: HMAC-SHA256 under ``security.checkpoint_key``) and read back in this
order: size bound, tag check, bounded decompression, then an unpickler that only resolves the classes a
series state is made of (River, this package, a few standard containers). A record that fails any step is
refused: counted (``marketprism_anomaly_restores_total{result="refused"}``), dead-lettered by the worker,
and the series starts cold.

The table's changelog (a compacted topic Faust creates, ``<app>-<table>-changelog``) is the durable
copy; a restarted worker recovers the table from it and :class:`Checkpointer` restores each series
the first time it sees it again, so a restart does not start series cold. A series is written after
``every`` updates or ``interval_s`` seconds (wall clock, injected for tests), whichever comes first; the
intervals of series first seen together are staggered over one interval.
"""

from __future__ import annotations

import io
import logging
import pickle
import time
import zlib
from collections.abc import Callable, MutableMapping
from typing import Any

from pipeline.anomaly.registry import SeriesState
from pipeline.kafka.sealed import Sealer, SealError
from pipeline.observability.metrics import counter

log = logging.getLogger(__name__)

CHECKPOINTS = counter("anomaly_checkpoints_total", "Series states written to the checkpoint table")
RESTORES = counter("anomaly_restores_total", "Series states restored from a checkpoint", ["result"])


PURPOSE = "anomaly-series-state"

# What a series state pickle may name: classes from these modules (River's models, ours, the standard library's
# containers and random state), and these few reconstruction functions.
_CLASS_MODULES = ("river.", "pipeline.anomaly.", "collections", "random", "numpy.", "_collections")
_FUNCTIONS = {
    ("copyreg", "_reconstructor"),
    ("functools", "partial"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}
_BUILTINS = {"object", "set", "frozenset", "complex", "slice", "range", "bytearray", "dict", "list", "tuple"}


class CheckpointRefused(Exception):
    """A checkpoint was refused before (or while) decoding it; ``reason`` is the dead-letter reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


class _StateUnpickler(pickle.Unpickler):
    """Resolves only the classes a series state is made of; anything else (``os.system``, ``eval``...) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        allowed_class = (module == "builtins" and name in _BUILTINS) or module.startswith(_CLASS_MODULES)
        if (module, name) not in _FUNCTIONS and not allowed_class:
            raise pickle.UnpicklingError(f"checkpoint names {module}.{name}, which a series state never holds")
        found = super().find_class(module, name)
        if (module, name) not in _FUNCTIONS and not isinstance(found, type):
            raise pickle.UnpicklingError(f"checkpoint names {module}.{name}, not a class")
        return found


def dumps(state: SeriesState, sealer: Sealer) -> bytes:
    return sealer.seal(zlib.compress(pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL), 3))


def loads(blob: bytes, sealer: Sealer) -> SeriesState:
    """The series state of a sealed checkpoint, or :class:`CheckpointRefused` (nothing is decoded before the tag
    verifies; decompression stops at ``sealer.max_bytes``)."""
    try:
        compressed = sealer.open(blob)
    except SealError as exc:
        raise CheckpointRefused(f"checkpoint_{exc.reason}", str(exc)) from None
    inflater = zlib.decompressobj()
    try:
        data = inflater.decompress(compressed, sealer.max_bytes)
    except zlib.error as exc:
        raise CheckpointRefused("checkpoint_corrupt", f"checkpoint does not decompress: {exc}") from None
    if inflater.unconsumed_tail:
        raise CheckpointRefused("checkpoint_too_large", f"checkpoint inflates beyond {sealer.max_bytes} bytes")
    try:
        state = _StateUnpickler(io.BytesIO(data)).load()
    except Exception as exc:  # any failure of a sealed but unreadable state (an older model version): refused
        raise CheckpointRefused("checkpoint_corrupt", f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, SeriesState):
        raise CheckpointRefused("checkpoint_corrupt", f"checkpoint holds {type(state).__name__}, not SeriesState")
    return state


class Checkpointer:
    """Reads and writes series states in a bytes->bytes mapping (a Faust table in the worker)."""

    def __init__(
        self,
        table: MutableMapping[bytes, bytes],
        sealer: Sealer,
        every: int = 60,
        interval_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.table = table
        self.sealer = sealer
        # refused checkpoints (series id, record, why) not yet taken by the owner (the worker dead-letters them)
        self.refused: list[tuple[str, bytes, CheckpointRefused]] = []
        self.every = every
        self.interval_s = interval_s
        self.clock = clock
        self._written_at: dict[str, float] = {}

    def load(self, series_id: str) -> SeriesState | None:
        blob = self.table.get(series_id.encode())
        if blob is None:
            return None
        try:
            state = loads(blob, self.sealer)
        except CheckpointRefused as exc:
            RESTORES.labels(result="refused").inc()
            log.error("checkpoint of %s refused (%s: %s); starting it cold", series_id, exc.reason, exc)
            self.refused.append((series_id, blob, exc))
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
        blob = dumps(state, self.sealer)
        if len(blob) > self.sealer.max_bytes:  # a restore would refuse it
            log.error("checkpoint of %s is %d bytes, above security.checkpoint_max_bytes", state.series_id, len(blob))
        self.table[state.series_id.encode()] = blob
        self._written_at[state.series_id] = now
        CHECKPOINTS.inc()
        return True
