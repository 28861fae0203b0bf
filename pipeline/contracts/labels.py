"""The incident labels file: the simulator's (and the demo's injected faults') ground truth, one JSON line per
incident (format in ``docs/simulator.md``). The anomaly evaluation and the demo summary score against it.

Times are simulated epoch microseconds, the same time base as the venue timestamps. The record follows the
contracts' evolution rules (a new field gets a default and goes last); unknown keys are ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec

from pipeline.contracts.records import Micros


class IncidentLabel(msgspec.Struct, frozen=True):
    """One incident as it happened (``symbol`` None: every symbol of the venue; ``end_us`` equals ``start_us``
    for point incidents)."""

    id: str
    kind: str
    venue: str
    symbol: str | None
    start_us: Micros
    end_us: Micros
    raw_symbol: str | None = None
    params: dict[str, Any] = {}
    detail: dict[str, Any] = {}


_decoder = msgspec.json.Decoder(IncidentLabel)
_encoder = msgspec.json.Encoder(order="sorted")


def decode_label(line: bytes | str) -> IncidentLabel:
    """One line of a labels file (raises ``msgspec.DecodeError`` on a bad one)."""
    return _decoder.decode(line)


def encode_label(label: IncidentLabel) -> bytes:
    """One line of a labels file, newline included (keys sorted, as the simulator writes them)."""
    return _encoder.encode(label) + b"\n"


def read_labels(path: Path) -> list[IncidentLabel]:
    """Every label of a labels file, in file order (blank lines skipped)."""
    return [decode_label(line) for line in path.read_bytes().splitlines() if line.strip()]
