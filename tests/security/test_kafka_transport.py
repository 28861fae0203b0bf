"""The Kafka client's security settings used for real against a secured endpoint on loopback.

Tansu's own TLS (``--cert``) did not complete a handshake here (its CLI refuses ``--cert`` with ``--key``, and a
combined PEM is accepted but the listener never answers a ClientHello), so a TLS-terminating proxy, Debian's
``stunnel4``, stands in front of a plaintext Tansu that advertises the proxy's port: every connection a client
makes (bootstrap, then the advertised broker) goes through TLS. The proxy requires a client certificate from the
test's throwaway CA (mutual TLS), so ``ssl_cafile``, ``ssl_certfile`` and ``ssl_keyfile`` are all exercised.

SASL: Tansu with ``--authentication`` offers SCRAM only and keeps users in its storage engine, which the memory
engine of this build cannot be given from outside; so what is proven is that it refuses a client without
credentials and a client whose SCRAM user it does not know, never a successful SASL login (docs/security.md).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from pipeline.anomaly.checkpoint import loads
from pipeline.contracts import Trade, decoder_for, encode, load_registry, market_key
from pipeline.contracts.examples import EXAMPLES
from pipeline.infra import free_port
from pipeline.infra.services import broker_binary, port_open
from pipeline.kafka.admin import apply
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.kafka.sealed import sealer_for
from pipeline.settings import KafkaSettings, Settings
from tests.anomaly.helpers import bars
from tests.conftest import read_to_end, unavailable
from tests.security.conftest import Pki, component, make_pki

STUNNEL = shutil.which("stunnel4") or shutil.which("stunnel")


@dataclass(frozen=True)
class Endpoint:
    tls_port: int
    plain_port: int
    pki: Pki


def _wait_port(port: int, proc: subprocess.Popen[bytes], log: Path) -> None:
    for _ in range(300):
        if port_open("127.0.0.1", port):
            return
        if proc.poll() is not None:
            raise AssertionError(log.read_text(errors="replace"))
        subprocess.run(["sleep", "0.1"], check=True)
    raise AssertionError(f"port {port} never opened: {log.read_text(errors='replace')}")


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Endpoint]:
    """Tansu on a plaintext loopback port, advertised as stunnel's TLS port; both stopped by PID."""
    if STUNNEL is None:
        unavailable("stunnel4 is not installed (apt-get install -y stunnel4)")
    pki = make_pki(tmp_path / "pki")
    plain, tls = free_port(), free_port()
    conf = tmp_path / "stunnel.conf"
    conf.write_text(
        "foreground = yes\n"
        "debug = notice\n"
        f"output = {tmp_path / 'stunnel.log'}\n"
        f"pid = {tmp_path / 'stunnel.pid'}\n"
        "[kafka]\n"
        f"accept = 127.0.0.1:{tls}\n"
        f"connect = 127.0.0.1:{plain}\n"
        f"cert = {pki.cert}\n"
        f"key = {pki.key}\n"
        f"CAfile = {pki.ca}\n"
        "verifyChain = yes\n"  # mutual TLS: a client certificate from the test CA is required
        "sslVersionMin = TLSv1.2\n"
    )
    url = f"tcp://127.0.0.1:{tls}"
    procs: list[subprocess.Popen[bytes]] = []
    broker_log = (tmp_path / "broker.log").open("wb")
    try:
        broker = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", f"tcp://127.0.0.1:{plain}", "--advertised-listener-url", url],
            stdout=broker_log,
            stderr=subprocess.STDOUT,
        )
        procs.append(broker)
        _wait_port(plain, broker, tmp_path / "broker.log")
        tunnel = subprocess.Popen([STUNNEL, str(conf)], stdout=broker_log, stderr=subprocess.STDOUT)
        procs.append(tunnel)
        _wait_port(tls, tunnel, tmp_path / "stunnel.log")
        yield Endpoint(tls, plain, pki)
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        broker_log.close()


def tls_settings(endpoint: Endpoint, **extra: object) -> KafkaSettings:
    options = {
        "bootstrap_servers": f"127.0.0.1:{endpoint.tls_port}",
        "security_protocol": "SSL",
        "ssl_cafile": endpoint.pki.ca,
        "ssl_certfile": endpoint.pki.client_cert,
        "ssl_keyfile": endpoint.pki.client_key,
    }
    return KafkaSettings.model_validate(options | extra)


async def test_produce_and_consume_through_mutual_tls(secured: Endpoint) -> None:
    kafka = tls_settings(secured)
    trade = EXAMPLES[Trade]
    producer = make_producer(kafka)
    await producer.start()
    try:
        for i in range(50):
            record = trade.__class__(**{**{f: getattr(trade, f) for f in trade.__struct_fields__}, "trade_id": str(i)})
            await producer.send("secure.trades", encode(record), key=b"binance:BTC-USDT")
        await producer.flush()
    finally:
        await producer.stop()
    consumer = make_consumer(kafka, "secure.trades", group_id="secure-readers")
    await consumer.start()
    got: list[Trade] = []
    try:
        async with asyncio.timeout(120):
            while len(got) < 50:
                for messages in (await consumer.getmany(timeout_ms=500)).values():
                    got += [decoder_for(Trade).decode(m.value) for m in messages if m.value]
        await consumer.commit()  # the group coordinator is reached through the tunnel too
    finally:
        await consumer.stop()
    assert sorted(int(t.trade_id) for t in got) == list(range(50))


@pytest.mark.parametrize(
    "broken",
    [
        {"ssl_cafile": None},  # the system CAs do not know the test CA: the server is not trusted
        {"ssl_certfile": None, "ssl_keyfile": None},  # no client certificate: the proxy refuses the handshake
        {"security_protocol": "PLAINTEXT", "ssl_cafile": None, "ssl_certfile": None, "ssl_keyfile": None},
    ],
    ids=["untrusted-server", "no-client-cert", "plaintext"],
)
async def test_a_client_without_the_right_credentials_gets_nothing_through(
    secured: Endpoint, broken: dict[str, object]
) -> None:
    kafka = tls_settings(secured, **broken)
    producer = make_producer(kafka, request_timeout_ms=5000, metadata_max_age_ms=5000)
    with pytest.raises((KafkaError, OSError, TimeoutError)):
        async with asyncio.timeout(60):
            await producer.start()
            await producer.send_and_wait("secure.trades", b"x")
    await producer.stop()


@pytest.fixture
def auth_broker(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """Tansu requiring client authentication (``--authentication``); stopped by PID."""
    port = free_port()
    log_path = tmp_path / "auth-broker.log"
    url = f"tcp://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        broker = subprocess.Popen(
            [broker_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url, "--authentication"],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_port(port, broker, log_path)
            yield port, log_path
        finally:
            broker.terminate()
            broker.wait(20)


async def test_a_broker_requiring_authentication_refuses_unauthenticated_and_unknown_clients(
    auth_broker: tuple[int, Path],
) -> None:
    """The SASL path as far as it can be proven here (see the module docstring)."""
    port, log_path = auth_broker
    for extra in (
        {},
        {
            "security_protocol": "SASL_PLAINTEXT",
            "sasl_mechanism": "SCRAM-SHA-256",
            "sasl_username": "intruder",
            "sasl_password": "guessed-password",
        },
    ):
        kafka = KafkaSettings.model_validate({"bootstrap_servers": f"127.0.0.1:{port}"} | extra)
        producer: AIOKafkaProducer = make_producer(kafka, request_timeout_ms=5000)
        with pytest.raises(Exception):  # noqa: B017 - aiokafka raises a connection error or a SCRAM KeyError
            async with asyncio.timeout(60):
                await producer.start()
                await producer.send_and_wait("secure.trades", b"x")
        await producer.stop()
    log_text = log_path.read_text(errors="replace")
    assert "NotAuthenticated" in log_text  # the broker, not the network, refused the unauthenticated client


async def test_admin_and_a_faust_worker_run_through_mutual_tls(secured: Endpoint, tmp_path: Path) -> None:
    """`topics apply` (admin client) and the anomaly worker (Faust, SSLCredentials) against the TLS endpoint: the
    worker consumes bars, learns them and writes its checkpoints, all through the tunnel."""
    kafka = tls_settings(secured)
    settings = Settings(kafka=kafka, topic_prefix="tls.", state_dir=tmp_path / "state", metrics_port=0)
    assert await apply(kafka, load_registry(), settings.topic_prefix) != []
    env = {
        "MARKETPRISM_KAFKA__SECURITY_PROTOCOL": "SSL",
        "MARKETPRISM_KAFKA__SSL_CAFILE": str(secured.pki.ca),
        "MARKETPRISM_KAFKA__SSL_CERTFILE": str(secured.pki.client_cert),
        "MARKETPRISM_KAFKA__SSL_KEYFILE": str(secured.pki.client_key),
    }
    history = bars("okx", "ETH-USDT", 30, seed=9)
    args = ("anomaly", "--warmup", "10", "--checkpoint-every", "10", "--checkpoint-interval", "3600")
    with component(settings, tmp_path / "worker.log", *args, "--health-interval", "3600", env=env) as proc:
        producer = make_producer(kafka)
        await producer.start()
        try:
            for bar in history:
                await producer.send(settings.topic("md.bars.1s.v1"), encode(bar), key=market_key("okx", "ETH-USDT"))
            await producer.flush()
        finally:
            await producer.stop()
        sealer = sealer_for(settings, "anomaly-series-state")
        seen = 0
        async with asyncio.timeout(180):
            while seen < 30 and proc.poll() is None:
                records = await read_to_end(settings, "anomaly-bar-models-changelog")
                mine = [r.value for r in records if r.key == b"okx:ETH-USDT:1s:trade_count" and r.value]
                seen = max((loads(v, sealer).detector.seen for v in mine), default=0)
                if seen < 30:
                    await asyncio.sleep(1)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert seen == 30, log[-3000:]
