"""schemathesis against the served /openapi.json (bounded): every operation, generated valid and invalid input,
with an admin token, on a real server reading the real broker and the migrated embedded ClickHouse. Zero
server errors, zero schema violations: responses match their documented status codes, content types, headers
and schemas, and invalid input is refused."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis import checks

from pipeline.api.app import create_app
from pipeline.api.views import LiveViews
from pipeline.contracts import load_registry
from pipeline.infra import free_port
from pipeline.settings import Settings
from pipeline.sinks.factory import make_sink

# Not "positive data acceptance": a request valid under the schema may still be refused with a 422 naming the
# field (a matcher with a bad regex, an end before the start: rules a JSON Schema cannot state).
CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.response_schema_conformance,
    checks.negative_data_rejection,
]


async def _migrate(settings: Settings) -> None:
    sink = make_sink(settings.clickhouse_url, load_registry(), settings.topic_prefix)
    await sink.setup()  # runs the migrations: the tables history reads exist
    await sink.close()


@pytest.fixture
def api_schema(topics: Settings, build) -> Iterator[tuple[schemathesis.BaseSchema, str]]:  # type: ignore[no-untyped-def]
    settings = build.api_settings(topics, rate_limit_per_s=10_000.0, rate_limit_burst=10_000)
    asyncio.run(_migrate(settings))
    views = LiveViews()
    for n in range(20):
        views.alerts.apply(build.alert(n, exchange="okx" if n % 2 else "binance"))
    views.silences.apply(build.silence("s1"))
    views.anomalies.apply(build.anomaly(1))
    port = free_port()
    app = create_app(settings, views=views)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False))
    thread = threading.Thread(target=server.run, name="api-under-test", daemon=True)
    thread.start()
    try:
        started = threading.Event()
        for _ in range(1200):
            if server.started or not thread.is_alive():
                break
            started.wait(0.05)
        assert server.started, "uvicorn did not start"
        schema = schemathesis.openapi.from_url(f"http://127.0.0.1:{port}/openapi.json")
        token = build.token(settings, "fuzzer", "admin", 3600)
        yield schema.exclude(path="/api/v1/stream"), token  # the stream is endless (tested in test_broker.py)
    finally:
        server.should_exit = True
        thread.join(30)


def _describe(exc: BaseException) -> str:
    """The failure and, for a group (schemathesis failures, hypothesis' Flaky), each member's message."""
    text = str(exc)
    for inner in getattr(exc, "exceptions", ()):
        text += "\n  - " + _describe(inner).replace("\n", "\n    ")
    return text


# schemathesis' own generators touch the global `random` module; hypothesis warns about it (not our code)
@pytest.mark.filterwarnings("ignore::hypothesis.errors.HypothesisWarning")
def test_no_server_errors_and_responses_match_the_schema(api_schema: tuple[schemathesis.BaseSchema, str]) -> None:
    """Each operation gets a bounded hypothesis run (valid and invalid data); every failure is collected."""
    schema, token = api_schema
    failures: list[str] = []
    operations = 0
    for result in schema.get_all_operations():
        operation = result.ok()
        operations += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
        def run(case: schemathesis.Case) -> None:
            case.call_and_validate(headers={"Authorization": f"Bearer {token}"}, checks=CHECKS, timeout=30)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # a check failed: go on, report every operation's failures
            failures.append(f"{operation.label}: {_describe(exc)}"[:4000])
    assert operations >= 20
    assert not failures, "\n\n".join(failures)
