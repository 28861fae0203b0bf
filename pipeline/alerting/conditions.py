"""Condition leaves: per-series state, how a sample updates it, its truth at an event time, and the next
time its truth can change with no new sample (absence, hold and window expiry)."""

from __future__ import annotations

import operator
from bisect import bisect_right
from collections.abc import Callable
from decimal import Decimal
from statistics import median

import msgspec

from pipeline.alerting.rules import (
    Absent,
    All,
    AnomalyScore,
    AnyOf,
    Condition,
    Divergence,
    Forecast,
    Leaf,
    Rate,
    Sum,
    Threshold,
)
from pipeline.alerting.sources import BPS, Sample
from pipeline.contracts.matchers import all_match

OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
    "==": operator.eq,
    "!=": operator.ne,
}
NEVER = 2**62

# Peer prices of a divergence leaf: exchange -> [(ts, exact price string)] in time order.
Peers = dict[str, list[tuple[int, str]]]


class LeafState(msgspec.Struct):
    """What one leaf remembers about one series (checkpointed)."""

    last_ts: int | None = None
    value: float | None = None
    active: bool = False
    points: list[tuple[int, float]] = []


def _ts(point: tuple[int, float]) -> int:
    return point[0]


def accepts(leaf: Leaf, sample: Sample) -> bool:
    if leaf.source != sample.source or not all_match(leaf.matchers, sample.labels):
        return False
    if isinstance(leaf, AnomalyScore):
        return sample.labels.get("kind") == "anomaly"
    if isinstance(leaf, Forecast):
        return sample.labels.get("kind") == "forecast" and "time_to_threshold_s" in sample.metrics
    return True


def update(leaf: Leaf, state: LeafState, sample: Sample) -> None:
    """Fold one accepted sample (at or after ``state.last_ts``) into the state."""
    state.last_ts = sample.ts
    if isinstance(leaf, Threshold | Rate | Sum):
        value = sample.metrics.get(leaf.metric)
        if isinstance(leaf, Threshold):
            state.value = value
            return
        if value is None:
            return
        points = state.points
        points.append((sample.ts, value))
        cutoff = sample.ts - leaf.window
        if points[0][0] <= cutoff:  # points are in time order: drop the expired head in one slice
            del points[: bisect_right(points, cutoff, key=_ts)]
    elif isinstance(leaf, AnomalyScore):
        state.value = sample.metrics["score"]
    elif isinstance(leaf, Forecast):
        state.value = sample.metrics["time_to_threshold_s"]


def _hysteresis(state: LeafState, value: float, op: str, threshold: float, recovery: float | None) -> bool:
    if state.active and recovery is not None:
        state.active = OPS[op](value, recovery)
    else:
        state.active = OPS[op](value, threshold)
    return state.active


def price_at(history: list[tuple[int, str]], at: int, max_age: int) -> str | None:
    """The latest price at or before ``at`` and no older than ``max_age``."""
    for ts, price in reversed(history):
        if ts <= at:
            return price if at - ts <= max_age else None
    return None


def divergence_bps(own: str, peers: Peers, me: str, at: int, max_age: int, min_peers: int) -> float | None:
    """Signed deviation of ``own`` from the median of the peer prices as of ``at``, in bps (exact until the
    final float)."""
    others = [Decimal(p) for venue, h in peers.items() if venue != me and (p := price_at(h, at, max_age)) is not None]
    if len(others) < min_peers:
        return None
    reference = median(others)
    return float((Decimal(own) - reference) * BPS / reference) if reference else None


def evaluate_leaf(leaf: Leaf, state: LeafState, at: int, peers: Peers | None, me: str) -> tuple[bool, float | None]:
    """The leaf's truth and value at event time ``at``; updates hysteresis memory."""
    if state.last_ts is None:
        return False, None
    age = at - state.last_ts
    if isinstance(leaf, Absent):
        return age >= leaf.after, age / 1_000_000
    if isinstance(leaf, Threshold):
        if state.value is None or (leaf.hold is not None and age >= leaf.hold):
            state.active = False
            return False, state.value
        return _hysteresis(state, state.value, leaf.op, leaf.value, leaf.recovery), state.value
    if isinstance(leaf, Sum):
        points = state.points
        first = bisect_right(points, at - leaf.window, key=_ts) if points and points[0][0] <= at - leaf.window else 0
        total = sum(v for _, v in points[first:]) if first else sum(v for _, v in points)
        return OPS[leaf.op](total, leaf.value), total
    if isinstance(leaf, Rate):
        points = [p for p in state.points if p[0] > at - leaf.window]
        if len(points) < 2 or points[-1][0] == points[0][0]:
            state.active = False
            return False, None
        (t0, v0), (t1, v1) = points[0], points[-1]
        if leaf.mode == "percent":
            if v0 == 0:
                return False, None
            change = (v1 - v0) / abs(v0) * 100
        else:
            change = (v1 - v0) / (t1 - t0) * leaf.per
        return _hysteresis(state, change, leaf.op, leaf.value, leaf.recovery), change
    if isinstance(leaf, AnomalyScore):
        fresh = age < leaf.hold and state.value is not None
        return bool(fresh and state.value is not None and state.value >= leaf.min_score), state.value
    if isinstance(leaf, Forecast):
        fresh = age < leaf.hold and state.value is not None
        lead = None if state.value is None else state.value * 1_000_000
        return bool(fresh and lead is not None and leaf.min_lead <= lead <= leaf.horizon), state.value
    if isinstance(leaf, Divergence):
        own = price_at((peers or {}).get(me, []), at, leaf.max_age)
        if own is None:
            state.active = False
            return False, None
        bps = divergence_bps(own, peers or {}, me, at, leaf.max_age, leaf.min_peers)
        if bps is None:
            state.active = False
            return False, None
        return _hysteresis(state, abs(bps), ">", leaf.threshold_bps, leaf.recovery_bps), bps
    raise TypeError(f"unknown leaf {leaf!r}")


def next_change(leaf: Leaf, state: LeafState, after: int) -> int:
    """The earliest event time > ``after`` at which the leaf's truth may change without a new sample."""
    if state.last_ts is None:
        return NEVER
    candidates: list[int] = []
    if isinstance(leaf, Absent):
        candidates.append(state.last_ts + leaf.after)
    elif isinstance(leaf, AnomalyScore | Forecast) or (isinstance(leaf, Threshold) and leaf.hold is not None):
        candidates.append(state.last_ts + (leaf.hold or 0))
    elif isinstance(leaf, Sum | Rate):  # points are in time order: the first still inside the window leaves first
        points, edge = state.points, after - leaf.window
        first = bisect_right(points, edge, key=_ts) if points and points[0][0] <= edge else 0
        if first < len(points):
            candidates.append(points[first][0] + leaf.window)
    later = [c for c in candidates if c > after]
    return min(later) if later else NEVER


def evaluate_tree(
    condition: Condition,
    states: list[LeafState],
    at: int,
    peers: list[Peers | None],
    me: str,
    start: int = 0,
) -> tuple[bool, float | None, int]:
    """Evaluate a condition tree; returns (truth, value, next leaf index). ``value`` is the first true
    leaf's value (else the first leaf's)."""
    if isinstance(condition, All | AnyOf):
        results = []
        index = start
        for sub in condition.conditions:
            truth, value, index = evaluate_tree(sub, states, at, peers, me, index)
            results.append((truth, value))
        truths = [t for t, _ in results]
        truth = all(truths) if isinstance(condition, All) else any(truths)
        value = next((v for t, v in results if t), results[0][1])
        return truth, value, index
    truth, value = evaluate_leaf(condition, states[start], at, peers[start], me)
    return truth, value, start + 1
