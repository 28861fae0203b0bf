"""The API end to end through the real broker: the rule engine fires an alert, the API lists it and streams it;
an ack (and a resolve, a silence) through the API changes its state in ops.alerts.v1; a silence made with the
real `amtool silence add` silences the next matching alert; `amtool alert query` lists what the API lists."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from pipeline.alerting import control
from pipeline.alerting.rules import RuleSet, parse_rule_file
from pipeline.alerting.runner import RuleEngineRunner, RunnerOptions
from pipeline.contracts.records import Alert, FeedMetrics
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import Settings

RULES = """
rules:
  - name: LagHigh
    severity: P2
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 1000}
    annotations: {summary: "{exchange} {stream} lag {value:.0f} ms"}
"""


def _fm(exchange: str, lag_ms: int) -> FeedMetrics:
    return FeedMetrics(
        exchange=exchange,  # type: ignore[arg-type]
        stream="book",
        source="collector",
        ts_event=time.time_ns() // 1000,
        interval_us=1_000_000,
        messages=100,
        connected=True,
        lag_p99_us=lag_ms * 1000,
        staleness_us=100_000,
    )


async def _feed(settings: Settings, **lags: int) -> None:
    producer = make_record_producer(settings.kafka, settings.topic_prefix)
    await producer.start()
    try:
        for exchange, ms in lags.items():
            assert await producer.send("ops.feed_metrics.v1", f"{exchange}:book".encode(), _fm(exchange, ms))
    finally:
        await producer.stop()


async def _sse(client: httpx.AsyncClient, events: list[dict[str, Any]], params: dict[str, Any]) -> None:
    async with client.stream("GET", "/api/v1/stream", params=params) as response:
        assert response.status_code == 200, await response.aread()
        current: dict[str, Any] = {}
        async for line in response.aiter_lines():
            if line.startswith(("id:", "event:", "data:")):
                name, _, value = line.partition(": ")
                current[name] = json.loads(value) if name == "data" else value
            elif not line and "event" in current:
                events.append(current)
                current = {}


async def _amtool(binary: str, url: str, http_config: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        binary,
        f"--alertmanager.url={url}",
        f"--http.config.file={http_config}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"amtool {args}: {err.decode()}"
    return out.decode()


@contextlib.asynccontextmanager
async def _engine_and_api(settings: Settings, served, until, token: str):  # type: ignore[no-untyped-def]
    """The rule engine (in this process, on the broker) and the API server reading the same topics."""
    parsed = parse_rule_file(RULES, "api.yaml")
    ruleset = RuleSet(rules=tuple(parsed.rules), inhibit_rules=tuple(parsed.inhibit_rules))
    stop = asyncio.Event()
    engine = asyncio.create_task(
        RuleEngineRunner(settings, ruleset, RunnerOptions(start_from="earliest", idle_advance_us=0)).run(stop)
    )
    try:
        async with served(settings) as api, api.client(token) as client:
            await until(lambda: _ready(client))
            yield api, client
    finally:
        stop.set()
        await asyncio.wait_for(engine, 60)


async def _firing(client: httpx.AsyncClient, exchange: str) -> list[dict[str, Any]]:
    page = (await client.get("/api/v1/alerts", params={"state": "firing"})).json()
    return [a for a in page["items"] if a["labels"]["exchange"] == exchange]


async def _on_topic(settings: Settings, fingerprint: str, state: str) -> Alert | None:
    found = (await control.current_alerts(settings)).get(fingerprint)
    return found if found is not None and found.state == state else None


async def test_alert_fires_streams_and_api_writes_reach_the_engine(
    topics: Settings, build, served, until, caplog
) -> None:  # type: ignore[no-untyped-def]
    """Fire -> listed and streamed; ack and resolve through the API -> the engine's new states on ops.alerts.v1;
    a silence through the API mutes the next matching alert."""
    caplog.set_level(logging.INFO, logger="pipeline.api")
    settings = build.api_settings(topics)
    operator = build.token(settings, "alice", "operator")
    async with _engine_and_api(settings, served, until, operator) as (_api, client):
        events: list[dict[str, Any]] = []
        reader = asyncio.create_task(_sse(client, events, {"kind": ["alert"], "venue": ["binance"]}))
        await _feed(settings, binance=5000, okx=10)
        fingerprint = (await until(lambda: _firing(client, "binance")))[0]["fingerprint"]
        await until(lambda: _has(events, fingerprint, "firing"))

        ack = await client.post(f"/api/v1/alerts/{fingerprint}/ack", json={"comment": "looking"})
        assert ack.status_code == 202 and ack.json()["actor"] == "alice"
        acked = await until(lambda: _on_topic(settings, fingerprint, "acked"))
        assert (acked.actor, acked.comment) == ("alice", "looking")
        await until(lambda: _has(events, fingerprint, "acked"))
        assert (await client.get(f"/api/v1/alerts/{fingerprint}")).json()["alert"]["state"] == "acked"

        created = await client.post(
            "/api/v1/silences", json={"matchers": ['exchange="okx"'], "duration_s": 3600, "comment": "okx upgrade"}
        )
        assert created.status_code == 201 and created.json()["silence"]["author"] == "alice"
        silence_id = created.json()["silence"]["silence_id"]

        async def okx_silenced() -> dict[str, Any] | None:
            await _feed(settings, okx=9000)
            page = (await client.get("/api/v1/alerts", params={"venue": "okx", "state": "silenced"})).json()
            return page["items"][0] if page["items"] else None

        okx = await until(okx_silenced, every_s=0.5)
        assert okx["actor"] == f"silence:{silence_id}"
        assert (await client.delete(f"/api/v1/silences/{silence_id}")).status_code == 200

        resolved = await client.post(f"/api/v1/alerts/{fingerprint}/resolve", json={"comment": "fixed"})
        assert resolved.status_code == 202
        done = await until(lambda: _on_topic(settings, fingerprint, "resolved"))
        assert done.actor == "alice"
        viewer = build.token(settings, "victor", "viewer")
        refused = await client.post(
            f"/api/v1/alerts/{fingerprint}/unack", headers={"Authorization": f"Bearer {viewer}"}
        )
        assert refused.status_code == 403
        logged = caplog.text
        assert f"alert {fingerprint}: ack by alice" in logged and f"alert {fingerprint}: resolve by alice" in logged
        assert f"silence {silence_id} expired by alice" in logged
        assert operator not in logged and viewer not in logged and build.SECRET not in logged
        reader.cancel()
        await asyncio.gather(reader, return_exceptions=True)


async def test_amtool_silences_and_lists_what_the_api_lists(  # type: ignore[no-untyped-def]
    topics: Settings, tmp_path: Path, build, served, until, amtool
) -> None:
    """The real amtool against the API: `silence add` silences the next matching alert, `silence query`,
    `alert query` lists what the API lists, `silence expire` ends the silence."""
    settings = build.api_settings(topics)
    operator = build.token(settings, "alice", "operator")
    http_config = tmp_path / "amtool-http.yml"
    http_config.write_text(f"authorization:\n  type: Bearer\n  credentials: {operator}\n")
    async with _engine_and_api(settings, served, until, operator) as (api, client):
        await _feed(settings, binance=5000, okx=10)
        fingerprint = (await until(lambda: _firing(client, "binance")))[0]["fingerprint"]

        silence_id = (
            await _amtool(amtool, api.url, http_config, "silence", "add", 'exchange="okx"',
                          "--duration=1h", "--comment=okx upgrade", "--author=ignored")
        ).strip()  # fmt: skip
        await until(lambda: _silence_listed(client, silence_id))
        listed = (await client.get("/api/v1/silences")).json()["items"]
        assert [(s["silence_id"], s["author"], s["status"]) for s in listed] == [(silence_id, "alice", "active")]
        queried = await _amtool(amtool, api.url, http_config, "silence", "query", "-o", "json")
        assert [s["id"] for s in json.loads(queried)] == [silence_id]

        async def okx_silenced() -> dict[str, Any] | None:
            await _feed(settings, okx=9000)
            page = (await client.get("/api/v1/alerts", params={"venue": "okx", "state": "silenced"})).json()
            return page["items"][0] if page["items"] else None

        okx = await until(okx_silenced, every_s=0.5)
        assert okx["actor"] == f"silence:{silence_id}"

        async def same_lists() -> bool:
            am = json.loads(await _amtool(amtool, api.url, http_config, "alert", "query", "--active", "--silenced",
                                          "-o", "json"))  # fmt: skip
            ours = (await client.get("/api/v1/alerts", params={"state": ["firing", "acked", "silenced"]})).json()
            return {a["fingerprint"] for a in am} == {a["fingerprint"] for a in ours["items"]}

        assert await until(same_lists)
        am_active = json.loads(await _amtool(amtool, api.url, http_config, "alert", "query", "-o", "json"))
        assert {a["fingerprint"] for a in am_active} == {fingerprint}
        v2 = (await client.get("/api/v2/alerts", params={"filter": 'exchange="okx"'})).json()
        assert [a["status"] for a in v2] == [{"state": "suppressed", "silencedBy": [silence_id], "inhibitedBy": []}]

        await _amtool(amtool, api.url, http_config, "silence", "expire", silence_id)

        async def expired() -> bool:
            one = (await client.get(f"/api/v2/silence/{silence_id}")).json()
            return one["status"]["state"] == "expired"

        assert await until(expired)


async def _ready(client: httpx.AsyncClient) -> bool:
    return bool((await client.get("/readyz")).json()["ready"])


async def _has(events: list[dict[str, Any]], fingerprint: str, state: str) -> bool:
    return any(e["data"].get("fingerprint") == fingerprint and e["data"]["state"] == state for e in events)


async def _silence_listed(client: httpx.AsyncClient, silence_id: str) -> bool:
    return any(s["silence_id"] == silence_id for s in (await client.get("/api/v1/silences")).json()["items"])


async def test_views_rebuild_from_the_topics_at_start(topics: Settings, build, served, until) -> None:  # type: ignore[no-untyped-def]
    """Alerts and silences already on the topics are in the views when /readyz says ready; later ones follow."""
    from pipeline.contracts import encode
    from pipeline.kafka import make_producer

    settings = build.api_settings(topics)
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for n in range(50):
            for version in (1, 2):
                record = build.alert(n, state="pending" if version == 1 else "firing", version=version)
                await producer.send(settings.topic("ops.alerts.v1"), encode(record), key=record.fingerprint.encode())
        await producer.send(settings.topic("ops.silences.v1"), encode(build.silence("s9")), key=b"s9")
        await producer.send(settings.topic("ops.alerts.v1"), b"not json", key=b"junk")
        await producer.flush()
        async with served(settings) as api, api.client(build.token(settings, "v", "viewer")) as client:
            await until(lambda: _ready(client))
            page = (await client.get("/api/v1/alerts", params={"limit": 500})).json()
            assert page["total"] == 50 and {a["state"] for a in page["items"]} == {"firing"}
            assert [s["silence_id"] for s in (await client.get("/api/v1/silences")).json()["items"]] == ["s9"]
            later = msgspec.structs.replace(build.alert(7, state="resolved", version=3))
            await producer.send_and_wait(settings.topic("ops.alerts.v1"), encode(later), key=b"fp00007")

            async def resolved() -> bool:
                page = (await client.get("/api/v1/alerts", params={"state": "resolved"})).json()
                return [a["fingerprint"] for a in page["items"]] == ["fp00007"]

            assert await until(resolved)
            metrics = (await client.get("/metrics")).text
            assert 'marketprism_api_view_undecodable_total{topic="ops.alerts.v1"} 1.0' in metrics
    finally:
        await producer.stop()
