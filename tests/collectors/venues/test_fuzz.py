"""Mutated real frames (hypothesis): a venue raises only FrameError or SubscriptionError, and
whatever it does accept comes out as contract-valid records (encode, then validating decode).

Four strategies x 2,500 examples = 10,000 mutated frames by default, drawn from every capture
(frames up to 20 kB; the 9 MB Coinbase snapshot is left out to keep the run short)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.bench.venues import feed, request_for
from pipeline.collectors.base import FrameError, FrameResult, SubscriptionError, Venue
from pipeline.collectors.capture import read_capture
from pipeline.contracts import decode, encode

from .conftest import CAPTURES

pytestmark = pytest.mark.shared

EXAMPLES = 2500
MAX_FRAME = 20_000
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

Corpus = list[tuple[str, str, str, str]]  # (capture, kind, endpoint, payload)


@pytest.fixture(scope="module")
def corpus(replay_dir: Path) -> tuple[dict[str, Corpus], dict[str, Venue]]:
    """Real frames bucketed by kind (see :func:`signature`), and venues warmed on their capture."""
    frames: Corpus = []
    venues: dict[str, Venue] = {}
    for name, (cls, symbols) in CAPTURES.items():
        lines = list(read_capture(replay_dir / f"{name}.txt"))
        venue = venues[name] = cls(symbols)
        for _ in feed(venue, lines):  # warm the books so deltas meet a synced state
            pass
        frames.extend(
            (name, line.kind, line.endpoint, line.payload)
            for line in lines
            if line.kind in ("ws_in", "rest") and len(line.payload) <= MAX_FRAME
        )
    buckets: dict[str, Corpus] = {}
    for frame in frames:
        buckets.setdefault(signature(frame[0], frame[1], frame[3]), []).append(frame)
    return buckets, venues


def run_one(venues: dict[str, Venue], name: str, kind: str, endpoint: str, payload: str | bytes) -> None:
    venue = venues[name]
    plan = venue.plan()[0]
    try:
        if kind == "rest":
            result = venue.on_rest(
                request_for(venue, endpoint),
                payload if isinstance(payload, bytes) else payload.encode("utf-8", "surrogatepass"),
                1,
            )
        else:
            result = venue.on_frame(payload, 1_700_000_000_000_000, plan)
    except (FrameError, SubscriptionError):
        return
    assert isinstance(result, FrameResult)
    for record in result.records:
        assert decode(type(record), encode(record)) == record


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1e5",
            "1E-7",
            "NaN",
            "Infinity",
            "0.000",
            "abc",
            "1_000",
            " 1",
            "buy",
            "SELL",
            "snapshot",
            "update",
            "BTC/USD",
        ]
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


def paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(node, dict):
        for key, value in node.items():
            found.extend(paths(value, (*prefix, key)))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found.extend(paths(value, (*prefix, index)))
    return found


def replace(node: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    node[path[0]] = replace(node[path[0]], path[1:], value)
    return node


def delete(node: Any, path: tuple[Any, ...]) -> Any:
    if not path:
        return node
    parent = node
    for step in path[:-1]:
        parent = parent[step]
    del parent[path[-1]]
    return node


def signature(name: str, kind: str, payload: str) -> str:
    """The kind of frame (venue + channel or event), so rare channels get fuzzed as often as books."""
    try:
        message = json.loads(payload)
    except ValueError:
        return f"{name}:text"
    if isinstance(message, list):
        return f"{name}:{message[-2]}"
    if kind == "rest" or not isinstance(message, dict):
        return f"{name}:{kind}"
    for key in ("stream", "channel", "event", "arg"):
        if key in message:
            value = message[key]
            tag = value.get("channel") if isinstance(value, dict) else str(value).partition("@")[2] or value
            return f"{name}:{key}:{tag}"
    return f"{name}:other"


def pick(corpus: tuple[dict[str, Corpus], dict[str, Venue]], data: st.DataObject) -> tuple[str, str, str, str]:
    buckets, _ = corpus
    bucket = data.draw(st.sampled_from(sorted(buckets)))
    return data.draw(st.sampled_from(buckets[bucket]))


@FUZZ
@given(data=st.data())
def test_leaf_replaced_with_any_json(corpus: Any, data: st.DataObject) -> None:
    name, kind, endpoint, payload = pick(corpus, data)
    if payload == "pong":
        return
    message = json.loads(payload)
    path = data.draw(st.sampled_from(paths(message)))
    mutated = json.dumps(replace(message, path, data.draw(json_values)))
    run_one(corpus[1], name, kind, endpoint, mutated)


@FUZZ
@given(data=st.data())
def test_field_deleted(corpus: Any, data: st.DataObject) -> None:
    name, kind, endpoint, payload = pick(corpus, data)
    if payload == "pong":
        return
    message = json.loads(payload)
    path = data.draw(st.sampled_from(paths(message)))
    run_one(corpus[1], name, kind, endpoint, json.dumps(delete(message, path)))


@FUZZ
@given(data=st.data())
def test_bytes_cut_spliced_and_flipped(corpus: Any, data: st.DataObject) -> None:
    name, kind, endpoint, payload = pick(corpus, data)
    raw = bytearray(payload.encode())
    at = data.draw(st.integers(0, len(raw)))
    operation = data.draw(st.sampled_from(["cut", "insert", "flip"]))
    if operation == "cut":
        raw = raw[:at]
    elif operation == "insert":
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=4))
    elif raw:
        raw[min(at, len(raw) - 1)] ^= data.draw(st.integers(1, 255))
    run_one(corpus[1], name, kind, endpoint, bytes(raw))


@FUZZ
@given(data=st.data())
def test_numbers_and_strings_perturbed(corpus: Any, data: st.DataObject) -> None:
    """Only scalar leaves change, to near-valid values (so most frames still parse and must validate)."""
    name, kind, endpoint, payload = pick(corpus, data)
    if payload == "pong":
        return
    message = json.loads(payload)
    leaves = [p for p in paths(message) if p and not isinstance(_at(message, p), (dict, list))]
    if not leaves:
        return
    path = data.draw(st.sampled_from(leaves))
    old = _at(message, path)
    new = data.draw(st.sampled_from(_near(old)))
    run_one(corpus[1], name, kind, endpoint, json.dumps(replace(message, path, new)))


def _at(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


def _near(value: Any) -> list[Any]:
    if isinstance(value, bool):
        return [not value, None, 1]
    if isinstance(value, int):
        return [value + 1, value - 1, -value, 0, -1, 2**63, str(value), value * 1000]
    if isinstance(value, str):
        return [
            value + "0",
            "0" + value,
            value[:-1],
            value.upper(),
            value.lower(),
            "-" + value,
            value + "e3",
            "",
            value.replace(".", ""),
            5,
        ]
    return [None, "x", 0]


def test_examples_budget_is_at_least_10k() -> None:
    strategies: list[Callable[..., None]] = [
        test_leaf_replaced_with_any_json,
        test_field_deleted,
        test_bytes_cut_spliced_and_flipped,
        test_numbers_and_strings_perturbed,
    ]
    assert len(strategies) * EXAMPLES >= 10_000
