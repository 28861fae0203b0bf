"""Alertmanager-style acceptance tests on a manual clock: alert state changes pushed at scripted
times, notifications expected within time windows at real local receivers."""

from __future__ import annotations

from typing import Any

import msgspec

from pipeline.notify.channels.base import IDEMPOTENCY_HEADER, REDELIVERY_HEADER
from tests.notify.conftest import alert, build
from tests.notify.receivers import HttpReceivers

FAST_RETRY = {"attempts": 3, "initial": 0.01, "max": 0.05}


def hook_config(http: HttpReceivers, **route: Any) -> dict[str, Any]:
    return {
        "route": {
            "receiver": "hook",
            "group_by": ["rule"],
            "group_wait": "30s",
            "group_interval": "5m",
            "repeat_interval": "4h",
            **route,
        },
        "receivers": [{"name": "hook", "channels": [{"type": "webhook", "url": http.url("/hook/hook")}]}],
        "retry": FAST_RETRY,
    }


def fingerprints(body: dict[str, Any], status: str | None = None) -> list[str]:
    return sorted(a["fingerprint"] for a in body["alerts"] if status is None or a["status"] == status)


async def test_group_wait_then_group_interval(http: HttpReceivers) -> None:
    h = build(hook_config(http))
    h.push(alert("a", "firing", 0))
    await h.at(10)
    h.push(alert("b", "firing", 10))
    await h.at(29.9)
    assert http.bodies("hook") == [], "nothing before group_wait"
    await h.at(30)
    [first] = http.bodies("hook")
    assert fingerprints(first) == ["a", "b"] and first["status"] == "firing"
    assert first["groupLabels"] == {"rule": "feed_stalled"}

    h.push(alert("c", "firing", 60))
    await h.at(329.9)
    assert len(http.bodies("hook")) == 1, "a new alert waits for the group_interval tick"
    await h.at(330)
    assert [fingerprints(b) for b in http.bodies("hook")] == [["a", "b"], ["a", "b", "c"]]
    await h.at(3000)
    assert len(http.bodies("hook")) == 2, "nothing changed: no message until repeat_interval"
    assert http.violations == []


async def test_repeat_interval(http: HttpReceivers) -> None:
    h = build(hook_config(http, group_wait=0, repeat_interval="1h"))
    h.push(alert("a", "firing", 0))
    await h.at(0)
    assert len(http.bodies("hook")) == 1
    await h.at(3599)
    assert len(http.bodies("hook")) == 1
    await h.at(3600)
    assert len(http.bodies("hook")) == 2, "repeated on the first group tick at or after repeat_interval"
    keys = [r.headers[IDEMPOTENCY_HEADER] for r in http.got["hook"]]
    assert len(set(keys)) == 2, "a repeat is a new message with its own idempotency key"
    await h.at(7199)
    assert len(http.bodies("hook")) == 2
    await h.at(7200)
    assert len(http.bodies("hook")) == 3


async def test_resolve_notification_and_group_cleanup(http: HttpReceivers) -> None:
    h = build(hook_config(http))
    h.push(alert("a", "firing", 0))
    h.push(alert("b", "firing", 0))
    await h.at(30)
    h.push(alert("a", "resolved", 100, fired=0))
    await h.at(329)
    assert len(http.bodies("hook")) == 1
    await h.at(330)
    second = http.bodies("hook")[1]
    assert second["status"] == "firing"
    assert fingerprints(second, "resolved") == ["a"] and fingerprints(second, "firing") == ["b"]
    resolved = next(a for a in second["alerts"] if a["fingerprint"] == "a")
    assert resolved["endsAt"] != "0001-01-01T00:00:00Z"

    h.push(alert("b", "resolved", 400, fired=0))
    await h.at(630)
    third = http.bodies("hook")[2]
    assert third["status"] == "resolved" and fingerprints(third) == ["b"]
    assert h.notifier.dispatcher.groups == {}, "an all-resolved group is dropped after it was notified"
    await h.at(5000)
    assert len(http.bodies("hook")) == 3


async def test_fired_and_resolved_within_group_wait_is_not_notified(http: HttpReceivers) -> None:
    h = build(hook_config(http))
    h.push(alert("a", "firing", 0))
    h.push(alert("a", "resolved", 5, fired=0))
    await h.at(1000)
    assert http.bodies("hook") == []


def channel_config(http: HttpReceivers, kind: str) -> dict[str, Any]:
    from tests.notify.receivers import DINGTALK_SECRET, DINGTALK_TOKEN, SLACK_PATH, WECOM_KEY

    base = http.url("")
    return {
        "slack": {"type": "slack", "url": http.url(SLACK_PATH)},
        "dingtalk": {"type": "dingtalk", "base_url": base, "access_token": DINGTALK_TOKEN, "secret": DINGTALK_SECRET},
        "wecom": {"type": "wecom", "base_url": base, "key": WECOM_KEY},
    }[kind]


async def test_routing_tree_with_continue_and_every_matcher(http: HttpReceivers, smtp: Any) -> None:
    box, controller = smtp
    config = {
        "route": {
            "receiver": "mail",
            "group_by": ["rule", "venue"],
            "group_wait": 0,
            "routes": [
                {"matchers": ['severity=~"P1|P2"'], "receiver": "slack", "continue": True},
                {"matchers": ["venue=binance", "rule!~test_.*"], "receiver": "dingtalk"},
                {"matchers": ["venue!=binance", "venue=~okx|kraken"], "receiver": "wecom"},
            ],
        },
        "receivers": [
            {
                "name": "mail",
                "channels": [
                    {
                        "type": "email",
                        "host": "127.0.0.1",
                        "port": controller.port,
                        "from": "marketprism@example.org",
                        "to": ["sre@example.org"],
                        "tls": "none",  # the local test relay offers no TLS (tests/security covers STARTTLS)
                    }
                ],
            },
            {"name": "slack", "channels": [channel_config(http, "slack")]},
            {"name": "dingtalk", "channels": [channel_config(http, "dingtalk")]},
            {"name": "wecom", "channels": [channel_config(http, "wecom")]},
        ],
        "retry": FAST_RETRY,
    }
    h = build(config)
    h.push(alert("p1-binance", "firing", 0, severity="P1", venue="binance"))  # slack (continue) + dingtalk
    h.push(alert("p3-okx", "firing", 0, severity="P3", venue="okx"))  # wecom only
    h.push(alert("p4-coinbase", "firing", 0, severity="P4", venue="coinbase"))  # no child: root (mail)
    h.push(alert("p3-test", "firing", 0, rule="test_rule", severity="P3", venue="binance"))  # !~ fails: root
    await h.at(0)

    assert http.violations == []
    [slack] = http.bodies("slack")
    assert "p1-binance" in slack["blocks"][1]["text"]["text"]
    [ding] = http.bodies("dingtalk")
    assert ding["msgtype"] == "markdown" and "p1-binance" in ding["markdown"]["text"]
    [wecom] = http.bodies("wecom")
    assert "p3-okx" in wecom["markdown"]["content"]
    subjects = sorted(m["Subject"] for m in box.messages)
    assert len(box.messages) == 2 and any("test_rule" in s for s in subjects), subjects
    bodies = " ".join(m.get_payload() for m in box.messages)
    assert "p4-coinbase" in bodies and "p3-test" in bodies
    assert all(m["Message-ID"].startswith("<") and m["X-MarketPrism-Idempotency-Key"] for m in box.messages)
    assert box.envelopes[0] == ("marketprism@example.org", ["sre@example.org"])


async def test_escalation_of_unacknowledged_p1(http: HttpReceivers) -> None:
    config = hook_config(http, group_wait=0, group_by=["..."])
    config["route"]["escalate"] = [{"after": "10m", "receiver": "manager"}]
    config["receivers"].append({"name": "manager", "channels": [{"type": "webhook", "url": http.url("/hook/manager")}]})
    h = build(config)
    h.push(alert("unacked", "firing", 0, severity="P1"))
    h.push(alert("acked", "firing", 0, severity="P1"))
    h.push(alert("p2", "firing", 0, severity="P2"))
    await h.at(0)
    assert len(http.bodies("hook")) == 3
    h.push(alert("acked", "acked", 300, fired=0))
    await h.at(599)
    assert http.bodies("manager") == []
    await h.at(600)
    [escalated] = http.bodies("manager")
    assert fingerprints(escalated) == ["unacked"] and escalated["escalation"] == 1
    assert len(http.bodies("hook")) == 3, "acknowledging is not itself a notification"

    h.push(alert("unacked", "resolved", 1200, fired=0, severity="P1"))
    await h.at(1500)
    assert fingerprints(http.bodies("manager")[-1], "resolved") == ["unacked"], (
        "the escalation target hears it resolved"
    )
    assert fingerprints(http.bodies("hook")[-1], "resolved") == ["unacked"]
    await h.at(4 * 3600 + 1)
    repeated = [fingerprints(b) for b in http.bodies("hook")[3:]]
    assert ["acked"] not in repeated, "an acknowledged alert is never repeated"
    assert ["p2"] in repeated, "an unacknowledged one is"


async def test_retries_then_success_keep_one_idempotency_key(http: HttpReceivers) -> None:
    h = build(hook_config(http, group_wait=0))
    http.fail_next("hook", 503, 429)
    h.push(alert("a", "firing", 0))
    await h.at(0)
    assert h.sink.statuses() == ["retrying", "retrying", "sent"]
    assert [r.attempt for r in h.sink.receipts] == [1, 2, 3]
    keys = {r.headers[IDEMPOTENCY_HEADER] for r in http.got["hook"]}
    assert len(http.got["hook"]) == 3 and len(keys) == 1
    assert h.sink.dead == []


async def test_retries_exhausted_go_to_dlq(http: HttpReceivers) -> None:
    h = build(hook_config(http, group_wait=0))
    http.fail_next("hook", 500, 502, 503)
    h.push(alert("a", "firing", 0))
    await h.at(0)
    assert h.sink.statuses() == ["retrying", "retrying", "dead_lettered"]
    [(batch, error)] = h.sink.dead
    assert batch.integration == "webhook" and "HTTP 503" in error
    await h.at(600)
    assert len(http.got["hook"]) == 3, "a dead-lettered message is settled: not retried on the next tick"


async def test_non_retryable_answer_is_dead_lettered_at_once(http: HttpReceivers) -> None:
    h = build(hook_config(http, group_wait=0))
    http.fail_next("hook", 400)
    h.push(alert("a", "firing", 0))
    await h.at(0)
    assert h.sink.statuses() == ["dead_lettered"] and len(h.sink.dead) == 1


async def test_dingtalk_and_wecom_error_codes(http: HttpReceivers) -> None:
    config = {
        "route": {"receiver": "cn", "group_wait": 0},
        "receivers": [{"name": "cn", "channels": [channel_config(http, "dingtalk"), channel_config(http, "wecom")]}],
        "retry": FAST_RETRY,
    }
    h = build(config)
    http.fail_next("dingtalk", 130101)  # sending too fast: retried
    http.fail_next("wecom", 93000)  # any other errcode: final
    h.push(alert("a", "firing", 0))
    await h.at(0)
    assert h.sink.statuses("dingtalk") == ["retrying", "sent"]
    assert h.sink.statuses("wecom") == ["dead_lettered"]
    assert http.violations == []


async def test_rate_limit_spaces_messages(http: HttpReceivers) -> None:
    config = {
        "route": {"receiver": "slack", "group_by": ["fp"], "group_wait": 0},
        "receivers": [
            {"name": "slack", "channels": [channel_config(http, "slack") | {"rate_limit": {"max": 1, "per": "1s"}}]}
        ],
        "retry": FAST_RETRY,
    }
    h = build(config)
    for fp in ("a", "b", "c"):
        h.push(alert(fp, "firing", 0))
    await h.at(0)
    arrivals = sorted(r.at for r in http.got["slack"])
    assert len(arrivals) == 3, "a message over the limit waits; it is never dropped"
    assert arrivals[2] - arrivals[0] >= 1.5, "three messages at 1 per second span about two seconds"
    assert h.sink.statuses() == ["sent"] * 3


async def test_restart_with_rebuilt_log_sends_nothing_twice(http: HttpReceivers) -> None:
    first = build(hook_config(http, group_wait=0, group_by=["fp"]))
    first.push(alert("a", "firing", 0))
    first.push(alert("b", "firing", 0))
    await first.at(0)
    assert len(http.bodies("hook")) == 2

    # A restart (or a second replica): the notification log rebuilt from the receipts topic.
    second = build(hook_config(http, group_wait=0, group_by=["fp"]), clock=first.clock)
    for receipt in first.sink.receipts:
        second.sink.nflog.observe(receipt)
    second.push(alert("a", "firing", 0))
    second.push(alert("b", "resolved", 50, fired=0))
    await second.at(60)
    bodies = http.bodies("hook")
    assert len(bodies) == 3, "only b's resolution is new"
    assert fingerprints(bodies[2], "resolved") == ["b"]


async def test_a_send_in_doubt_is_resent_once_under_its_key_and_marked_as_a_redelivery(http: HttpReceivers) -> None:
    first = build(hook_config(http, group_wait=0))
    first.push(alert("a", "firing", 0))
    await first.at(0)
    [intent] = first.sink.intents
    [sent] = first.sink.receipts
    assert intent.idempotency_key == sent.idempotency_key, "the intent precedes the send of the same message"
    # The notifier died after the receiver accepted and before the receipt landed: the log rebuilt by the next one
    # holds the intent only.
    second = build(hook_config(http, group_wait=0), clock=first.clock)
    second.sink.nflog.observe(intent)
    assert second.sink.nflog.in_doubt(intent.idempotency_key)
    second.push(alert("a", "firing", 0))
    await second.at(0)
    await second.at(30)  # more group_interval ticks: once settled, never again
    got = http.got["hook"]
    assert [r.headers[IDEMPOTENCY_HEADER] for r in got] == [sent.idempotency_key] * 2
    assert [r.headers.get(REDELIVERY_HEADER) for r in got] == [None, "true"]
    assert [r.body["redelivery"] for r in got] == [False, True]
    assert len(http.processed("hook")) == 1, "a receiver honouring Idempotency-Key acts once"
    assert second.sink.statuses() == ["sent"]
    assert not second.sink.nflog.in_doubt(intent.idempotency_key)


async def test_same_key_already_settled_is_skipped(http: HttpReceivers) -> None:
    first = build(hook_config(http, group_wait=0))
    first.push(alert("a", "firing", 0))
    await first.at(0)
    # A replica that saw the receipt's key but not (yet) its entry for this group: the key stops it.
    second = build(hook_config(http, group_wait=0), clock=first.clock)
    [sent] = first.sink.receipts
    second.sink.nflog.observe(msgspec.structs.replace(sent, group_key="written-by-an-older-config"))
    second.push(alert("a", "firing", 0))
    await second.at(0)
    assert len(http.bodies("hook")) == 1
    assert second.sink.statuses() == ["skipped_duplicate"]


async def test_flapping_is_reported_once(http: HttpReceivers) -> None:
    h = build(hook_config(http, group_wait=0, repeat_interval="10m"))
    h.push(alert("a", "firing", 0))
    await h.at(0)
    h.push(alert("a", "flapping", 60, fired=0))
    await h.at(3600)
    states = [[x["state"] for x in b["alerts"]] for b in http.bodies("hook")]
    assert states == [["firing"], ["flapping"]], states
