"""Planted secrets never come out: each component runs as a real process with every credential-bearing setting
set to a recognisable value (ClickHouse password, SMTP password, Kafka SASL password, webhook/Slack/DingTalk
tokens, venue proxy credentials, the checkpoint key) while the peers those secrets are for are unreachable or
refuse them, so every error path runs; then its log, its ``/metrics``, the dead letters and notification receipts
it wrote, and the settings' ``repr`` and validation errors are searched for the values: none is found."""

from __future__ import annotations

import asyncio
import contextlib
import re
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path

import httpx
import jwt
import pytest
import yaml

from pipeline.contracts import Alert
from pipeline.infra import free_port
from pipeline.infra.services import broker_binary, port_open
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import Settings, SettingsError, load_settings
from tests.conftest import read_to_end
from tests.security.conftest import component, scrape

SECRETS = {
    "clickhouse": "PLANTEDclickhouse7c1",
    "smtp": "PLANTEDsmtp9f2",
    "sasl": "PLANTEDsasl4d8",
    "webhook": "PLANTEDwebhook6a3",
    "slack": "PLANTEDslack2b5",
    "dingtalk": "PLANTEDdingtalk8e0",
    "dingtalk_sign": "PLANTEDdingsign1c4",
    "proxy": "PLANTEDproxy5f9",
    "checkpoint": "PLANTEDcheckpointkey0a7",
    "jwt": "PLANTEDjwtsecret-0123456789abcdef0123456789",
}
# A log line wrapped by the console handler (or drawn inside a traceback box) must not hide a secret from the search.
_NOISE = re.compile(r"[\s│╭╮╰╯─]+")


def leaked(text: str) -> list[str]:
    flat = _NOISE.sub("", text)
    return [name for name, value in SECRETS.items() if value in text or value in flat]


def secret_env(closed: int) -> dict[str, str]:
    """Every credential-bearing setting, planted; the peers they are for listen nowhere (port ``closed``)."""
    return {
        "MARKETPRISM_CLICKHOUSE_URL": f"clickhouse://sink@127.0.0.1:{closed}/marketprism",
        "MARKETPRISM_CLICKHOUSE_PASSWORD": SECRETS["clickhouse"],
        "MARKETPRISM_VENUES__OKX__PROXY": f"http://mp:{SECRETS['proxy']}@127.0.0.1:{closed}",
        "MARKETPRISM_VENUES__OKX__WS_URL": f"ws://127.0.0.1:{closed}/ws/v5/public",
        "MARKETPRISM_VENUES__OKX__REST_URL": f"http://127.0.0.1:{closed}",
        "MARKETPRISM_SECURITY__CHECKPOINT_KEY": SECRETS["checkpoint"],
        "MARKETPRISM_API__JWT_SECRET": SECRETS["jwt"],
        "MARKETPRISM_LOG_LEVEL": "DEBUG",
    }


def routes_file(path: Path, closed: int) -> Path:
    base = f"http://127.0.0.1:{closed}"
    channels = [
        {"type": "webhook", "url": f"{base}/hook?token={SECRETS['webhook']}"},
        {"type": "slack", "url": f"{base}/services/T0/B0/{SECRETS['slack']}"},
        {"type": "dingtalk", "base_url": base, "access_token": SECRETS["dingtalk"], "secret": SECRETS["dingtalk_sign"]},
        {
            "type": "email",
            "host": "127.0.0.1",
            "port": closed,
            "from": "mp@example.org",
            "to": ["sre@example.org"],
            "username": "mp",
            "password": SECRETS["smtp"],
        },
    ]
    config = {
        "route": {"receiver": "all", "group_wait": 0},
        "receivers": [{"name": "all", "channels": channels}],
        "retry": {"attempts": 2, "initial": "10ms", "max": "20ms"},
    }
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[int]:
    """A Tansu broker that requires SASL (the SASL password is refused there)."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    with (tmp_path / "auth-broker.log").open("wb") as log:
        broker = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--authentication"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            for _ in range(300):
                if port_open("127.0.0.1", port):
                    break
                subprocess.run(["sleep", "0.1"], check=True)
            yield port
        finally:
            broker.terminate()
            broker.wait(20)


async def until(check: Callable[[], bool], timeout_s: float = 120.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not check():  # noqa: ASYNC110 - other processes' logs
            await asyncio.sleep(0.5)


async def api_answers(port: int) -> str:
    """What the API answers a forged token, a token signed with a guessed key and no token (all refused)."""
    forged = jwt.encode({"sub": "x", "role": "admin"}, "guessed-key-0123456789abcdef0123456789", algorithm="HS256")
    texts: list[str] = []
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client, asyncio.timeout(120):
        while True:
            try:
                await client.get("/api/v1/alerts")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.5)
        for headers in ({"Authorization": f"Bearer {forged}"}, {"Authorization": "Bearer not.a.token"}, {}):
            response = await client.get("/api/v1/alerts", headers=headers)
            assert response.status_code in (401, 403), response.text
            texts.append(response.text + str(response.headers))
    return "\n".join(texts)


def test_settings_repr_and_errors_hide_every_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = free_port()
    for name, value in secret_env(closed).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MARKETPRISM_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("MARKETPRISM_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("MARKETPRISM_KAFKA__SASL_USERNAME", "mp")
    monkeypatch.setenv("MARKETPRISM_KAFKA__SASL_PASSWORD", SECRETS["sasl"])
    settings = load_settings()
    assert settings.clickhouse_url.startswith("clickhouse://sink:")  # the password is in the URL the driver gets
    assert leaked(repr(settings)) == [] and leaked(str(settings)) == []
    assert leaked(repr(settings.venues)) == []
    monkeypatch.setenv("MARKETPRISM_METRICS_PORT", "not-a-port")  # an invalid setting beside the secrets
    with pytest.raises(SettingsError) as failure:
        load_settings()
    assert "metrics_port" in str(failure.value) and leaked(str(failure.value)) == []
    monkeypatch.setenv("MARKETPRISM_METRICS_PORT", "0")
    monkeypatch.setenv("MARKETPRISM_CLICKHOUSE_URL", f"mysql://sink:{SECRETS['clickhouse']}@db:3306/x")
    with pytest.raises(SettingsError) as failure:
        load_settings()
    assert "clickhouse_url" in str(failure.value) and leaked(str(failure.value)) == []


async def test_no_component_logs_exports_or_publishes_a_planted_secret(
    topics: Settings, tmp_path: Path, auth_broker: int
) -> None:
    closed = free_port()
    env = secret_env(closed)
    routes = routes_file(tmp_path / "notify.yaml", closed)
    sasl = {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": f"127.0.0.1:{auth_broker}",
        "MARKETPRISM_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "MARKETPRISM_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "MARKETPRISM_KAFKA__SASL_USERNAME": "mp",
        "MARKETPRISM_KAFKA__SASL_PASSWORD": SECRETS["sasl"],
    }
    api_port = free_port()
    runs = {
        "collect": (["collect", "--venue", "okx"], {}),
        "worker": (["worker"], {}),
        "api": (["api", "--port", str(api_port)], {}),
        "sink": (["sink"], {}),
        "notify": (["notify", "--routes", str(routes)], {}),
        "anomaly": (["anomaly", "--health-interval", "1"], {}),
        "alerts": (["alerts", "run", "--lag-interval", "1s"], {}),
        "alerts-sasl": (["alerts", "run"], sasl),
        "anomaly-sasl": (["anomaly"], sasl),
    }
    ports = {name: free_port() for name in runs}
    logs = {name: tmp_path / f"{name}.log" for name in runs}
    metrics: dict[str, str] = {}

    def log_of(name: str) -> str:
        return logs[name].read_text(errors="replace") if logs[name].exists() else ""

    with ExitStack() as stack:
        procs = {
            name: stack.enter_context(
                component(
                    topics,
                    logs[name],
                    *args,
                    env=env | {"MARKETPRISM_METRICS_PORT": str(ports[name])} | extra,
                )
            )
            for name, (args, extra) in runs.items()
        }
        producer = make_record_producer(topics.kafka, topics.topic_prefix)
        await producer.start()
        try:
            alert = Alert(
                fingerprint="fp-secret",
                rule="feed_stalled",
                state="firing",
                severity="P1",
                labels={"exchange": "okx"},
                annotations={"summary": "okx stalled"},
                ts_event=1_700_000_000_000_000,
                active_since=1_700_000_000_000_000,
                fired_at=1_700_000_000_000_000,
                version=1,
            )
            await producer.send("ops.alerts.v1", b"fp-secret", alert)
            await producer.flush()
        finally:
            await producer.stop()
        # every error path has run: the collector reconnected through the refused proxy, the sink failed to
        # reach ClickHouse (and exited), each notification channel gave up, the SASL clients were refused
        await until(lambda: log_of("collect").count("reconnecting") >= 2)
        await until(lambda: procs["sink"].poll() is not None)
        await until(lambda: log_of("notify").count("giving up") >= 4)
        await until(lambda: "rule engine ready" in log_of("alerts"))
        answers = await api_answers(api_port)
        await until(lambda: log_of("alerts-sasl").count("ERROR") + log_of("alerts-sasl").count("Error") >= 1)
        await until(lambda: len(log_of("anomaly-sasl")) > 0 and "rror" in log_of("anomaly-sasl"))
        for name in runs:
            if name != "sink" and procs[name].poll() is None:
                with contextlib.suppress(TimeoutError):  # a SASL process may never serve /metrics: none to leak
                    metrics[name] = await scrape(ports[name], timeout_s=30)
    written = await read_to_end(topics, "ops.dlq.v1", "ops.notifications.v1")
    assert {"collect", "worker", "notify", "anomaly", "alerts"} <= set(metrics), sorted(metrics)
    found = {name: leaked(log_of(name)) for name in runs}
    found |= {f"{name} /metrics": leaked(text) for name, text in metrics.items()}
    found["api answers"] = leaked(answers)
    found["records"] = leaked("\n".join((m.value or b"").decode(errors="replace") for m in written))
    assert {where: names for where, names in found.items() if names} == {}
    assert any(b"giving up" in (m.value or b"") or b"dead_lettered" in (m.value or b"") for m in written)
