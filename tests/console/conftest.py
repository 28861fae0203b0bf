"""Console test harness: a real stack (the session's Tansu broker, the rule engine in this process, the API with
the console on a real uvicorn port) and Debian's Chromium driven by Playwright (async API, headless).

Page objects (:class:`Console`) hold the locators, by role and label; tests say what a person does and sees.
Screenshots go to docs/console/ only with ``MARKETPRISM_CONSOLE_SCREENSHOTS=1`` (so ``make test`` leaves the tree
clean).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, Page, async_playwright, expect

from pipeline.alerting.rules import RuleSet, parse_rule_file
from pipeline.alerting.runner import RuleEngineRunner, RunnerOptions
from pipeline.contracts.records import FeedMetrics
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import Settings
from tests.api.conftest import api_settings, serve, token, wait_until
from tests.conftest import PROJECT_ROOT, unavailable

CHROMIUM = Path(os.environ.get("MARKETPRISM_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = os.environ.get("MARKETPRISM_CONSOLE_SCREENSHOTS") == "1"
SHOTS_DIR = PROJECT_ROOT / "docs" / "console"
WAIT_MS = 30_000

RULES = """
rules:
  - name: LagHigh
    severity: P2
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 1000}
    annotations: {summary: "{exchange} {stream} lag {value:.0f} ms", threshold: "1000"}
"""


def feed(exchange: str, stream: str, lag_ms: float, ts: int | None = None, rate: float | None = 50.0) -> FeedMetrics:
    return FeedMetrics(
        exchange=exchange,  # type: ignore[arg-type]
        stream=stream,
        source="collector",
        ts_event=ts if ts is not None else time.time_ns() // 1000,
        interval_us=1_000_000,
        messages=100,
        connected=True,
        lag_p99_us=int(lag_ms * 1000),
        staleness_us=100_000,
        rate=rate,
    )


async def publish(settings: Settings, topic: str, records: list[tuple[bytes, Any]]) -> None:
    producer = make_record_producer(settings.kafka, settings.topic_prefix)
    await producer.start()
    try:
        for key, record in records:
            assert await producer.send(topic, key, record)
    finally:
        await producer.stop()


@dataclass
class Stack:
    url: str
    settings: Settings
    operator: str
    viewer: str

    async def feed(self, **lags: float) -> None:
        """One feed-metrics record per ``exchange__stream=lag_ms``."""
        records = []
        for key, ms in lags.items():
            exchange, _, stream = key.partition("__")
            records.append((f"{exchange}:{stream}".encode(), feed(exchange, stream or "book", ms)))
        await publish(self.settings, "ops.feed_metrics.v1", records)


@pytest.fixture
async def stack(topics: Settings) -> AsyncIterator[Stack]:
    """The rule engine and the API (with the console) on the session broker, under this test's topic prefix."""
    settings = api_settings(topics, sse_heartbeat_s=2.0)
    parsed = parse_rule_file(RULES, "console.yaml")
    ruleset = RuleSet(rules=tuple(parsed.rules), inhibit_rules=tuple(parsed.inhibit_rules))
    stop = asyncio.Event()
    engine = asyncio.create_task(
        RuleEngineRunner(settings, ruleset, RunnerOptions(start_from="earliest", idle_advance_us=0)).run(stop)
    )
    try:
        async with serve(settings) as api, api.client() as client:

            async def ready() -> bool:
                return bool((await client.get("/readyz")).json()["ready"])

            await wait_until(ready)
            yield Stack(api.url, settings, token(settings, "alice", "operator"), token(settings, "victor", "viewer"))
    finally:
        stop.set()
        await asyncio.wait_for(engine, 60)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():  # noqa: ASYNC240 - one stat before the browser starts
        unavailable(f"Chromium is not installed at {CHROMIUM} (make test installs Debian's chromium with apt)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
        )
        try:
            yield launched
        finally:
            await launched.close()


class Console:
    """A page object for one browser tab on the console."""

    def __init__(self, page: Page, base: str):
        self.page = page
        self.base = base
        self.dialogs: list[str] = []  # any alert(), confirm() or prompt() a page opened (an injected script)
        self._pending: set[asyncio.Future[None]] = set()
        page.on("dialog", lambda d: self._dialog(d))
        page.set_default_timeout(WAIT_MS)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        self._pending.add(task := asyncio.ensure_future(dialog.dismiss()))
        task.add_done_callback(self._pending.discard)

    async def login(self, bearer: str, path: str = "/") -> None:
        await self.page.goto(f"{self.base}{path}")
        await expect(self.page.get_by_role("heading", name="Log in")).to_be_visible()
        await self.page.get_by_label("Token").fill(bearer)
        await self.page.get_by_role("button", name="Log in").click()
        await expect(self.page.get_by_role("button", name="Log out")).to_be_visible(timeout=WAIT_MS)

    async def goto(self, path: str) -> None:
        await self.page.goto(f"{self.base}{path}")

    async def live(self) -> None:
        """Wait until the page's event stream is open (the header's live-updates status says so)."""
        await expect(self.page.get_by_role("status", name="live updates")).to_have_text("live", timeout=WAIT_MS)

    def alert(self, rule: str, text: str) -> Any:
        """The alert list item of ``rule`` whose text contains ``text``."""
        return self.page.get_by_role("listitem", name=f"{rule} ").filter(has_text=text)

    def alert_in_state(self, rule: str, text: str, state: str) -> Any:
        return self.page.get_by_role("listitem", name=f"{rule} {state}").filter(has_text=text)

    async def shot(self, name: str, dark: bool = False) -> None:
        """Screenshots at desktop (1280 px) and phone (390 px) width (and the dark scheme at desktop width), when
        asked for."""
        if not SCREENSHOTS:
            return
        SHOTS_DIR.mkdir(parents=True, exist_ok=True)
        for width, height, suffix in ((1280, 900, "desktop"), (390, 844, "phone")):
            await self.page.set_viewport_size({"width": width, "height": height})
            await self.page.screenshot(path=str(SHOTS_DIR / f"{name}-{suffix}.png"), full_page=True)
        await self.page.set_viewport_size({"width": 1280, "height": 900})
        if dark:
            await self.page.emulate_media(color_scheme="dark")
            await self.page.screenshot(path=str(SHOTS_DIR / f"{name}-dark.png"), full_page=True)
            await self.page.emulate_media(color_scheme="light")


@contextlib.asynccontextmanager
async def tab(browser: Browser, stack: Stack, context: Any = None) -> AsyncIterator[Console]:
    ctx = context or await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await ctx.new_page()
    try:
        yield Console(page, stack.url)
    finally:
        await page.close()
        if context is None:
            await ctx.close()


@pytest.fixture
def tabs() -> Any:
    return tab
