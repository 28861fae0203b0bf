"""Test harness: real parts, really started.

Session fixtures start a Tansu broker and (when installed) a Debian clickhouse-server on free
loopback ports in temp dirs, and stop them by PID at the end. Each test gets its own topic prefix
on the shared broker, so tests never see each other's records. Tests marked ``shared`` need the
real captures in ``../shared`` and skip with the reason when it is absent (fail, with CI=true).

Shared helpers (import them as ``from tests.conftest import ...``: the suite runs in importlib mode):
:func:`read_to_end` and :func:`read_records` read topics back from the broker to their true log end.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from pipeline.contracts import Record, decode
from pipeline.infra import InfraError, broker_service, clickhouse_server_binary, clickhouse_service, free_port
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import KafkaSettings, Settings

R = TypeVar("R", bound=Record)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
# The real captures and NAB data: ../shared beside the checkout, or where MARKETPRISM_SHARED_DIR says (a forge
# checks the data out inside its workspace). Never copied into the project.
SHARED_DIR = Path(os.environ.get("MARKETPRISM_SHARED_DIR") or PROJECT_ROOT.parent / "shared").resolve()
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
REPLAY_DIR = SHARED_DIR / "replay"
NAB_DIR = SHARED_DIR / "nab"


def unavailable(reason: str) -> NoReturn:
    """A test's real part is missing: skip with the reason on a developer machine, fail with it in CI
    (``CI=true``), so CI can never go green by skipping the tests that need data or servers."""
    if IN_CI:
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


SHARED_MISSING = f"needs the shared data (../shared or MARKETPRISM_SHARED_DIR): {SHARED_DIR} is absent"


def pytest_runtest_setup(item: pytest.Item) -> None:
    if "shared" in item.keywords and not SHARED_DIR.is_dir():
        unavailable(SHARED_MISSING)


@pytest.fixture(autouse=True)
def _isolated_config_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """``load_settings(FILE)`` exports ``MARKETPRISM_CONFIG`` so that child processes read the same file; a test
    that calls it must not hand its config to every process later tests start (docs/live.yaml's SASL settings
    once broke every subprocess after tests/supervisor). monkeypatch puts the variable back after each test."""
    monkeypatch.delenv("MARKETPRISM_CONFIG", raising=False)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED_DIR.is_dir():
        unavailable(SHARED_MISSING)
    return SHARED_DIR


@pytest.fixture(scope="session")
def replay_dir(shared_dir: Path) -> Path:
    return shared_dir / "replay"


@dataclass(frozen=True)
class Broker:
    host: str
    port: int

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A Tansu broker for the whole session (memory storage)."""
    service = broker_service(tmp_path_factory.mktemp("broker"), port=free_port(), die_with_parent=True)
    service.start()
    try:
        yield Broker(service.host, service.port)
    finally:
        service.stop()


@pytest.fixture
def settings(broker: Broker, tmp_path: Path) -> Settings:
    """Settings pointing at the session broker, with a topic prefix of this test's own."""
    return Settings(
        kafka=KafkaSettings(bootstrap_servers=broker.bootstrap),
        topic_prefix=f"t{uuid.uuid4().hex[:10]}.",
        state_dir=tmp_path / "state",
        clickhouse_url=f"chdb://{tmp_path / 'chdb'}",
        metrics_port=0,
    )


@pytest.fixture
async def topics(settings: Settings) -> Settings:
    """The registry applied under this test's prefix."""
    from pipeline.contracts import load_registry
    from pipeline.kafka.admin import apply

    await apply(settings.kafka, load_registry(), settings.topic_prefix)
    return settings


@dataclass(frozen=True)
class ClickHouseServer:
    host: str
    tcp_port: int
    http_port: int
    service: object

    @property
    def url(self) -> str:
        return f"clickhouse://default:@{self.host}:{self.tcp_port}/default"


@pytest.fixture(scope="session")
def clickhouse_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClickHouseServer]:
    """Debian's clickhouse-server on free ports (skips when it is not installed)."""
    if clickhouse_server_binary() is None:
        unavailable("clickhouse-server is not installed (make test installs it with apt where it can)")
    tcp, http = free_port(), free_port()
    service = clickhouse_service(
        tmp_path_factory.mktemp("clickhouse"), tcp_port=tcp, http_port=http, die_with_parent=True
    )
    try:
        service.start(timeout=60)
    except InfraError as exc:
        unavailable(f"clickhouse-server could not start here: {exc}")
    try:
        yield ClickHouseServer(service.host, tcp, http, service)
    finally:
        service.stop()


async def read_to_end(settings: Settings, *names: str, limit_s: float = 120.0) -> list[ConsumerRecord[bytes, bytes]]:
    """Every record of the topics ``names`` (registry names, read under ``settings.topic_prefix``) from
    their start to their log end: topic by topic (in the order given), partition by partition, in offset
    order. The partitions are the broker's; the ends are taken once, at the call, with
    :func:`pipeline.kafka.offsets.log_end_offsets` (Tansu's ListOffsets reports the start of the last batch,
    which would stop a read early), so records appended meanwhile may or may not be included. Fails with
    ``TimeoutError`` after ``limit_s`` instead of hanging when an end is never reached."""
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        await consumer.topics()  # fetch the metadata that partitions_for_topic answers from
        partitions = [
            TopicPartition(topic, p)
            for topic in map(settings.topic, names)
            for p in sorted(consumer.partitions_for_topic(topic) or ())
        ]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await log_end_offsets(settings.kafka, partitions)
        out: list[ConsumerRecord[bytes, bytes]] = []
        async with asyncio.timeout(limit_s):
            for tp in partitions:
                while await consumer.position(tp) < ends[tp]:
                    out += (await consumer.getmany(tp, timeout_ms=2000)).get(tp, [])
        return out
    finally:
        await consumer.stop()


async def read_records(settings: Settings, name: str, record_type: type[R]) -> list[R]:
    """Every record of topic ``name`` decoded (and validated) as ``record_type``, in the order of
    :func:`read_to_end`."""
    return [decode(record_type, m.value) for m in await read_to_end(settings, name)]
