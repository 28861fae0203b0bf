"""API test harness: settings with a JWT secret, token minting, an in-process ASGI client over prepared views
(unit tests), a real uvicorn server on a free port (broker and amtool tests), and alert builders."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
import uvicorn

from pipeline.api.app import create_app
from pipeline.api.auth import mint
from pipeline.api.views import LiveViews
from pipeline.contracts.records import Alert, Anomaly, Silence
from pipeline.infra import free_port
from pipeline.settings import ApiSettings, Settings

SECRET = "test-secret-that-is-long-enough-for-hs256"
T0 = 1_700_000_000_000_000


def api_settings(base: Settings | None = None, **api: Any) -> Settings:
    settings = base or Settings(metrics_port=0)
    fields = {"jwt_secret": SECRET, "rate_limit_per_s": 1000.0, "rate_limit_burst": 1000} | api
    return settings.model_copy(update={"api": ApiSettings(**fields)})


def token(settings: Settings, name: str = "alice", role: str = "operator", ttl: int = 600) -> str:
    return mint(settings.api, name, role, ttl)  # type: ignore[arg-type]


def alert(
    n: int = 0,
    state: str = "firing",
    severity: str = "P2",
    rule: str = "FeedStalled",
    exchange: str = "binance",
    version: int = 2,
    **labels: str,
) -> Alert:
    all_labels = {"alertname": rule, "severity": severity, "exchange": exchange, "stream": f"s{n}"} | labels
    return Alert(
        fingerprint=f"fp{n:05d}",
        rule=rule,
        state=state,  # type: ignore[arg-type]
        severity=severity,  # type: ignore[arg-type]
        labels=all_labels,
        annotations={"summary": f"{exchange} s{n} stalled"},
        ts_event=T0 + n,
        active_since=T0,
        fired_at=T0 + 1,
        version=version,
    )


def anomaly(n: int = 0, kind: str = "anomaly", exchange: str = "binance", score: float = 0.9) -> Anomaly:
    return Anomaly(
        series_id=f"{exchange}:BTC-USDT:1s:log_return:{n}",
        metric="log_return",
        ts_event=T0 + n,
        value=0.01,
        score=score,
        detector="ensemble",
        exchange=exchange,  # type: ignore[arg-type]
        symbol="BTC-USDT",
        kind=kind,  # type: ignore[arg-type]
        time_to_threshold_s=120.0 if kind == "forecast" else None,
    )


def silence(silence_id: str = "s1", matchers: list[str] | None = None, ends_in_s: int = 3600) -> Silence:
    import time

    now = time.time_ns() // 1000
    return Silence(
        silence_id=silence_id,
        matchers=matchers or ['exchange="okx"'],
        starts_at=now - 1_000_000,
        ends_at=now + ends_in_s * 1_000_000,
        author="bob",
        comment="maintenance",
        created_at=now - 1_000_000,
    )


@pytest.fixture
def build() -> SimpleNamespace:
    """Record builders and token helpers (test modules cannot import conftest under --import-mode=importlib)."""
    return SimpleNamespace(
        alert=alert, anomaly=anomaly, silence=silence, token=token, api_settings=api_settings, SECRET=SECRET, T0=T0
    )


@pytest.fixture
def asgi() -> Callable[..., Any]:
    """``asgi(views, settings=None)``: an httpx client on the app over ``views`` (no broker, no lifespan)."""
    clients: list[httpx.AsyncClient] = []

    def make(views: LiveViews, settings: Settings | None = None) -> httpx.AsyncClient:
        app = create_app(settings or api_settings(), read_topics=False, views=views)
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api")
        clients.append(client)
        return client

    return make


@dataclass
class Served:
    url: str
    settings: Settings
    app: Any

    def client(self, bearer: str | None = None, **options: Any) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30, **options)


@contextlib.asynccontextmanager
async def serve(settings: Settings, read_topics: bool = True, views: LiveViews | None = None) -> AsyncIterator[Served]:
    """A real uvicorn server with the API on a free loopback port, in this event loop; stopped at exit."""
    port = free_port()
    app = create_app(settings, read_topics=read_topics, views=views)
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    try:
        async with asyncio.timeout(60):
            while not server.started:
                assert not task.done(), "uvicorn stopped during start"
                await asyncio.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}", settings, app)
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


@pytest.fixture
def served() -> Callable[..., Any]:
    return serve


async def wait_until(check: Callable[[], Any], limit_s: float = 90.0, every_s: float = 0.2) -> Any:
    """Poll the async ``check`` until it returns something truthy (returned); fails after ``limit_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while True:
        result = await check()
        if result:
            return result
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(every_s)


@pytest.fixture
def until() -> Callable[..., Any]:
    return wait_until


def amtool_or_skip() -> str:
    """The amtool binary; skips when absent (fails when CI=true: `make pytest` installs it)."""
    found = shutil.which("amtool")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("amtool is missing (make amtool installs Debian's prometheus-alertmanager)")
        pytest.skip("amtool is not installed (make amtool installs Debian's prometheus-alertmanager)")
    return found


@pytest.fixture
def amtool() -> str:
    return amtool_or_skip()
