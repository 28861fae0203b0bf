"""Unit tests of the notifier's pure parts: matchers and the routing walk, config validation,
durations, the HTTP status classifier, the dedup decision, the documented example config, and
that secrets stay out of errors and logs."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.contracts.matchers import Matcher
from pipeline.infra import free_port
from pipeline.notify.base import Batch, ConfigError, GroupAlert
from pipeline.notify.channels.base import classify_status
from pipeline.notify.config import compile_routes, parse_config
from pipeline.notify.dedup import idempotency_key, needs_update
from pipeline.notify.durations import parse_seconds
from pipeline.notify.nflog import Entry
from tests.notify.conftest import T0, S, alert, build

DOCS = Path(__file__).resolve().parents[2] / "docs" / "notify.md"


def docs_example() -> dict:
    text = DOCS.read_text()
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    return yaml.safe_load(block.group(1))


@pytest.mark.parametrize(
    ("matcher", "labels", "expected"),
    [
        ("venue=binance", {"venue": "binance"}, True),
        ("venue=binance", {"venue": "okx"}, False),
        ("venue!=binance", {}, True),
        ('severity=~"P1|P2"', {"severity": "P2"}, True),
        ("severity=~P1|P2", {"severity": "P12"}, False),  # anchored
        ("rule!~test_.*", {"rule": "test_x"}, False),
        ("rule!~test_.*", {"rule": "feed_stalled"}, True),
        ("missing=", {}, True),
    ],
)
def test_matchers(matcher: str, labels: dict[str, str], expected: bool) -> None:
    assert Matcher.parse(matcher).matches(labels) is expected


def test_bad_matchers_are_rejected() -> None:
    with pytest.raises(ValueError, match="bad matcher"):
        Matcher.parse("no operator")
    with pytest.raises(ValueError, match="bad regex"):
        Matcher.parse("a=~(")


def test_routing_walk_inherits_and_continues() -> None:
    config = parse_config(docs_example())
    tree = compile_routes(config.route)
    p1 = {"severity": "P1", "exchange": "binance", "rule": "x"}
    assert [r.receiver for r in tree.match(p1)] == ["sre-slack", "cn-desk"]
    assert [r.receiver for r in tree.match({"severity": "P3", "exchange": "okx"})] == ["webhook"]
    assert [r.receiver for r in tree.match({"severity": "P3", "exchange": "coinbase"})] == ["oncall-log"]
    slack, webhook = tree.routes[0], tree.routes[2]
    assert slack.group_wait_us == 0 and slack.group_interval_us == 300 * S and slack.group_by == ("rule", "exchange")
    assert webhook.repeat_interval_us == 3600 * S and webhook.group_wait_us == 30 * S
    assert slack.escalate[0].after_us == 900 * S and slack.escalate[0].receiver == "sre-lead"


def test_docs_example_passes_notify_check(tmp_path: Path) -> None:
    path = tmp_path / "notify.yaml"
    path.write_text(yaml.safe_dump(docs_example()))
    result = CliRunner().invoke(app, ["notify", "check", "--routes", str(path)])
    assert result.exit_code == 0, result.output
    assert "sre-slack" in result.output and "escalate(P1 after 900s -> sre-lead)" in result.output


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda c: c["route"].update(receiver="nobody"), "undefined receiver"),
        (lambda c: c["route"]["routes"][0].update(matchers=["bad"]), "bad matcher"),
        (lambda c: c["route"].update(group_wait="soon"), "expected a duration"),
        (lambda c: c["receivers"][0]["channels"][0].update(type="pager"), "does not match any of the expected tags"),
        (lambda c: c["receivers"][1]["channels"][0].update(title="{{ broken"), "template does not compile"),
        (lambda c: c["receivers"][1]["channels"][0].update(colour="red"), "Extra inputs are not permitted"),
        (lambda c: c["route"].update(matchers=["a=b"]), "root route matches everything"),
    ],
)
def test_invalid_configs_name_the_problem(change, message: str) -> None:  # type: ignore[no-untyped-def]
    config = docs_example()
    change(config)
    with pytest.raises(ConfigError, match=message):
        parse_config(config)


def test_durations() -> None:
    assert parse_seconds("500ms") == 0.5
    assert parse_seconds("5m") == 300
    assert parse_seconds("1d") == 86400
    assert parse_seconds(2) == 2
    with pytest.raises(ValueError):
        parse_seconds("-1s")


@pytest.mark.parametrize(
    ("status", "retryable", "delivered"),
    [
        (200, False, True),
        (204, False, True),
        (400, False, False),
        (404, False, False),
        (408, True, False),
        (429, True, False),
        (500, True, False),
        (503, True, False),
    ],
)
def test_http_status_classifier(status: int, retryable: bool, delivered: bool) -> None:
    again, error = classify_status(status, "body")
    assert again is retryable and (error is None) is delivered


def _batch(*items: tuple[str, str], repeat_s: int = 3600, ts: int = T0) -> Batch:
    alerts = tuple(
        GroupAlert(fingerprint=fp, episode=f"{fp}@0", status=status, alert=alert(fp, "firing", 0))  # type: ignore[arg-type]
        for fp, status in items
    )
    return Batch(
        receiver="r",
        route="root",
        group_key="g",
        group_labels={},
        alerts=alerts,
        ts=ts,
        repeat_interval_us=repeat_s * S,
        integration="webhook",
    )


def test_needs_update_follows_alertmanager() -> None:
    entry = Entry(frozenset({"a@0"}), frozenset(), T0, "k1")
    assert needs_update(None, _batch(("a", "firing")), T0) == (True, False)
    assert needs_update(None, _batch(("a", "resolved")), T0) == (False, False), "never told: nothing to resolve"
    assert needs_update(None, _batch(("a", "muted")), T0) == (False, False)
    assert needs_update(entry, _batch(("a", "firing")), T0 + 10) == (False, False)
    assert needs_update(entry, _batch(("a", "firing"), ("b", "firing")), T0) == (True, False)
    assert needs_update(entry, _batch(("a", "resolved")), T0) == (True, False)
    assert needs_update(entry, _batch(("a", "firing")), T0 + 3600 * S) == (True, True)
    assert needs_update(entry, _batch(("a", "muted")), T0 + 3600 * S) == (False, False), "acked: no repeat"
    told_resolved = Entry(frozenset(), frozenset({"a@0"}), T0, "k2")
    assert needs_update(told_resolved, _batch(("a", "firing")), T0) == (False, False), "a replayed old episode"


def test_idempotency_key_is_deterministic_per_state_change() -> None:
    firing = _batch(("a", "firing"), ("b", "firing"))
    assert idempotency_key(firing, None) == idempotency_key(_batch(("b", "firing"), ("a", "firing")), None)
    assert idempotency_key(firing, None) != idempotency_key(_batch(("a", "firing"), ("b", "resolved")), None)
    assert idempotency_key(firing, None) != idempotency_key(firing, "previous")


async def test_secrets_stay_out_of_errors_receipts_and_logs(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()  # nothing listens there
    config = {
        "route": {"receiver": "cn", "group_wait": 0},
        "receivers": [
            {
                "name": "cn",
                "channels": [
                    {
                        "type": "dingtalk",
                        "base_url": f"http://127.0.0.1:{port}",
                        "access_token": "TOKEN123",
                        "secret": "SECRET456",
                    },
                    {"type": "wecom", "base_url": f"http://127.0.0.1:{port}", "key": "KEY789"},
                    {"type": "slack", "url": f"http://127.0.0.1:{port}/services/HOOKSECRET"},
                ],
            }
        ],
        "retry": {"attempts": 2, "initial": 0.01, "max": 0.01},
    }
    h = build(config)
    with caplog.at_level(logging.DEBUG, logger="pipeline"):
        h.push(alert("a", "firing", 0))
        await h.at(0)
    assert sorted(h.sink.statuses()) == ["dead_lettered"] * 3 + ["retrying"] * 3
    text = " ".join(str(r.error) for r in h.sink.receipts) + " ".join(e for _, e in h.sink.dead) + caplog.text
    for secret in ("TOKEN123", "SECRET456", "KEY789", "HOOKSECRET"):
        assert secret not in text
