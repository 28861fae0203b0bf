"""Stage 5, silences: which active silence (matchers, ``[starts_at, ends_at)`` in event time) mutes an
alert, and when the set of active silences next changes."""

from __future__ import annotations

from pipeline.alerting.conditions import NEVER
from pipeline.alerting.errors import BadInput
from pipeline.contracts.matchers import Matcher, all_match, parse_matcher
from pipeline.contracts.records import Silence


def matchers_of(silence: Silence) -> tuple[Matcher, ...]:
    try:
        return tuple(parse_matcher(m) for m in silence.matchers)
    except ValueError as exc:
        raise BadInput("bad_silence", f"silence {silence.silence_id}: {exc}") from exc


def check(silence: Silence) -> None:
    """Reject a silence the engine cannot apply (bad matchers, no matchers, ends before it starts)."""
    if not silence.matchers:
        raise BadInput("bad_silence", f"silence {silence.silence_id}: needs at least one matcher")
    matchers_of(silence)
    if silence.ends_at < silence.starts_at:
        raise BadInput("bad_silence", f"silence {silence.silence_id}: ends before it starts")


def muting(silences: dict[str, Silence], labels: dict[str, str], at: int) -> Silence | None:
    for silence in sorted(silences.values(), key=lambda s: s.silence_id):
        if silence.starts_at <= at < silence.ends_at and all_match(matchers_of(silence), labels):
            return silence
    return None


def next_boundary(silences: dict[str, Silence], after: int) -> int:
    times = [t for s in silences.values() for t in (s.starts_at, s.ends_at) if t > after]
    return min(times, default=NEVER)
