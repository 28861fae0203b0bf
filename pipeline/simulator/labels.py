"""The labels file: one JSON line per incident, written when the incident happens.

It is the ground truth for the anomaly and alerting issues (format in ``docs/simulator.md``).
Times are simulated epoch microseconds, the same time base as the venue timestamps in the frames.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import IO, Any

import msgspec

log = logging.getLogger(__name__)


class Label(msgspec.Struct, frozen=True, kw_only=True):
    """One incident as it happened."""

    id: str
    kind: str
    venue: str
    symbol: str | None  # normalised; None = every symbol of the venue
    raw_symbol: str | None
    start_us: int
    end_us: int
    params: dict[str, Any]
    detail: dict[str, Any] = {}


_encoder = msgspec.json.Encoder(order="sorted")


def encode(label: Label) -> bytes:
    return _encoder.encode(label) + b"\n"


def decode(line: bytes | str) -> Label:
    return msgspec.json.decode(line, type=Label)


def read_labels(path: Path) -> list[Label]:
    return [decode(line) for line in path.read_bytes().splitlines() if line.strip()]


class LabelWriter:
    """Appends labels to a JSONL file, flushing each line so readers see it as it happens."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[bytes] = path.open("wb")

    def __call__(self, label: Label) -> None:
        self._file.write(encode(label))
        self._file.flush()
        log.info("incident %s %s %s %s", label.id, label.kind, label.venue, label.symbol or "*")

    def close(self) -> None:
        self._file.close()
