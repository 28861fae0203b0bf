"""The capture line format shared by recorded files, the replay server and ``marketprism record``.

One line per event, in receipt order::

    <recv_ts: epoch seconds, 6 decimals> TAB <kind> TAB <endpoint> TAB <raw payload>

``kind`` is ``connect`` (a websocket opened to ``endpoint``), ``ws_out`` (a frame we sent, on the
connection opened last), ``ws_in`` (a frame the venue sent; endpoint ``-``) or ``rest`` (the body
of a REST response from ``endpoint``). Payloads are byte-for-byte what was on the wire.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TextIO

Kind = Literal["connect", "ws_out", "ws_in", "rest"]
KINDS: frozenset[str] = frozenset({"connect", "ws_out", "ws_in", "rest"})


class CaptureFormatError(ValueError):
    """A line that does not follow the capture format (the message names file and line)."""


@dataclass(frozen=True, slots=True)
class CaptureLine:
    ts_recv_us: int
    kind: Kind
    endpoint: str
    payload: str

    def to_line(self) -> str:
        seconds, micros = divmod(self.ts_recv_us, 1_000_000)
        return f"{seconds}.{micros:06d}\t{self.kind}\t{self.endpoint}\t{self.payload}\n"


def _micros(text: str) -> int:
    whole, _, frac = text.partition(".")
    return int(whole) * 1_000_000 + int((frac + "000000")[:6])


def parse_line(line: str, where: str = "") -> CaptureLine:
    parts = line.rstrip("\r\n").split("\t", 3)
    if len(parts) != 4:
        raise CaptureFormatError(f"{where}: expected 4 tab-separated fields, got {len(parts)}")
    ts, kind, endpoint, payload = parts
    if kind not in KINDS:
        raise CaptureFormatError(f"{where}: unknown kind {kind!r}")
    try:
        micros = _micros(ts)
    except ValueError as exc:
        raise CaptureFormatError(f"{where}: bad timestamp {ts!r}") from exc
    return CaptureLine(micros, kind, endpoint, payload)  # type: ignore[arg-type]


def read_capture(path: Path) -> Iterator[CaptureLine]:
    """Lines of one capture file, in order (blank lines skipped)."""
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                yield parse_line(line, f"{path}:{number}")


def write_lines(out: TextIO, lines: Iterable[CaptureLine]) -> int:
    count = 0
    for line in lines:
        out.write(line.to_line())
        count += 1
    return count
