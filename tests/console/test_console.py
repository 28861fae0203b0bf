"""The console in a real browser (Debian's Chromium, headless) against a real stack: the broker, the rule engine
and the API. Every wait is on a condition (Playwright's expect, 30 s bounds); nothing is timed."""

from __future__ import annotations

import re
import time

import httpx
import msgspec
from playwright.async_api import expect

from pipeline.contracts.records import Alert, Anomaly, ReferencePrice
from tests.api.conftest import wait_until
from tests.console.conftest import WAIT_MS, Stack, feed, publish


async def test_live_alert_ack_across_tabs_and_silence_from_alert(stack: Stack, browser, tabs) -> None:  # type: ignore[no-untyped-def]
    """Log in; an alert the rule engine fires appears without reload; acknowledging it in one tab updates the
    other tab; a silence created from an alert hides the next matching alert."""
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    async with tabs(browser, stack, context) as one, tabs(browser, stack, context) as two:
        await one.login(stack.operator, "/alerts")
        await two.goto("/alerts")  # same browser session (cookie)
        await one.live()
        await two.live()
        await stack.feed(binance__book=5000, okx__book=10)
        await expect(one.alert_in_state("LagHigh", "binance", "firing")).to_be_visible(timeout=WAIT_MS)
        await expect(two.alert_in_state("LagHigh", "binance", "firing")).to_be_visible(timeout=WAIT_MS)

        async with tabs(browser, stack, context) as detail:  # a third tab on the alert's own page
            fingerprint = await one.alert("LagHigh", "binance").get_attribute("data-fingerprint")
            await detail.goto(f"/alerts/{fingerprint}")
            await detail.live()
            await one.alert("LagHigh", "binance").get_by_role("button", name="Acknowledge").click()
            await expect(detail.page.get_by_role("heading", name="LagHigh acked")).to_be_visible(timeout=WAIT_MS)
        await expect(one.page.get_by_role("status").filter(has_text="ack:")).to_be_visible()
        # the default filter shows acked alerts: the other tab sees the new state without a reload
        await expect(two.alert_in_state("LagHigh", "binance", "acked")).to_be_visible(timeout=WAIT_MS)
        await expect(one.alert_in_state("LagHigh", "binance", "acked")).to_be_visible(timeout=WAIT_MS)

        # silence from the alert: the form is filled with its labels; keep alertname and exchange
        await one.alert("LagHigh", "binance").get_by_role("link", name="Silence").click()
        matchers = one.page.get_by_label(re.compile("Matchers"))
        await expect(matchers).to_have_value(re.compile('exchange="binance"'))
        await matchers.fill('alertname="LagHigh"\nexchange="binance"')
        await expect(one.page.get_by_text("Matches 1 current alert")).to_be_visible()  # the live preview
        await one.page.get_by_label("Comment").fill("binance maintenance")
        await one.page.get_by_role("button", name="Create silence").click()
        await expect(one.page.get_by_role("heading", name="Silences")).to_be_visible()
        await expect(one.page.get_by_text("binance maintenance")).to_be_visible(timeout=WAIT_MS)

        # the next matching alert (another binance stream) is silenced by the engine and hidden by default
        async def silenced_on_api() -> bool:
            await stack.feed(binance__trades=7000)
            async with httpx.AsyncClient(base_url=stack.url, timeout=30) as http:
                page = await http.get(
                    "/api/v1/alerts",
                    params={"state": "silenced", "venue": "binance"},
                    headers={"Authorization": f"Bearer {stack.operator}"},
                )
            return any(a["labels"].get("stream") == "trades" for a in page.json()["items"])

        await wait_until(silenced_on_api, every_s=0.5)
        await one.goto("/alerts")
        # the silence mutes both binance alerts (the acked one too): the default list hides silenced alerts
        await expect(one.alert("LagHigh", "binance")).to_have_count(0)
        await expect(one.page.get_by_text("No alerts match.")).to_be_visible()
        await one.page.get_by_role("checkbox", name="silenced").check()
        await expect(one.alert_in_state("LagHigh", "trades", "silenced")).to_be_visible(timeout=WAIT_MS)
    await context.close()


async def test_viewer_sees_no_actions_and_forged_posts_are_refused(stack: Stack, browser, tabs) -> None:  # type: ignore[no-untyped-def]
    await stack.feed(kraken__book=6000)
    async with tabs(browser, stack) as viewer:
        await viewer.login(stack.viewer, "/alerts")
        row = viewer.alert_in_state("LagHigh", "kraken", "firing")
        await expect(row).to_be_visible(timeout=WAIT_MS)
        fingerprint = await row.get_attribute("data-fingerprint")
        for name in ("Acknowledge", "Resolve", "Silence", "Acknowledge selected"):
            await expect(viewer.page.get_by_role("button", name=name, exact=True)).to_have_count(0)
        await expect(viewer.page.get_by_role("link", name="Silence", exact=True)).to_have_count(0)
        csrf = await viewer.page.locator('meta[name="csrf-token"]').get_attribute("content")
        # a request forged from the page, with the session cookie and even the right CSRF token: the role refuses
        forged = await viewer.page.request.post(
            f"{stack.url}/alerts/{fingerprint}/ack", form={"csrf_token": csrf or ""}, fail_on_status_code=False
        )
        assert forged.status == 403
        assert "needs operator" in await forged.text()
        refused = await viewer.page.request.post(
            f"{stack.url}/silences", form={"csrf_token": csrf or "", "matchers": 'exchange="kraken"'}
        )
        assert refused.status == 403

    async with tabs(browser, stack) as operator:
        await operator.login(stack.operator, "/alerts")
        await expect(operator.alert("LagHigh", "kraken")).to_be_visible(timeout=WAIT_MS)
        # an operator's cookie without the CSRF token (what a cross-site form would send): 403
        no_token = await operator.page.request.post(f"{stack.url}/alerts/{fingerprint}/ack", form={"comment": "x"})
        assert no_token.status == 403
        assert "CSRF" in await no_token.text()
        # the bearer API does not take the cookie at all
        api = await operator.page.request.post(f"{stack.url}/api/v1/alerts/{fingerprint}/ack", data={})
        assert api.status == 401


async def test_hostile_label_renders_as_text(stack: Stack, browser, tabs) -> None:  # type: ignore[no-untyped-def]
    hostile = "<script>alert(1)</script><img src=x onerror=alert(2)>"
    await publish(stack.settings, "ops.feed_metrics.v1", [(b"okx:x", feed("okx", hostile, 9000))])
    async with tabs(browser, stack) as console:
        await console.login(stack.operator, "/alerts")
        row = console.alert("LagHigh", "okx")
        await expect(row).to_be_visible(timeout=WAIT_MS)
        await expect(row.get_by_text(hostile).first).to_be_visible()
        await row.get_by_role("link", name="LagHigh", exact=True).click()
        await expect(console.page.get_by_role("heading", name=re.compile("LagHigh"))).to_be_visible()
        await expect(console.page.get_by_role("cell", name=hostile, exact=True)).to_be_visible()
        await expect(console.page.locator("script", has_text="alert(1)")).to_have_count(0)
        await expect(console.page.locator("img[src=x]")).to_have_count(0)
        assert console.dialogs == []


async def test_anomaly_replay_draws_a_chart(stack: Stack, browser, tabs) -> None:  # type: ignore[no-untyped-def]
    """A feed-rate series with a burst is on the topic; the replay with a short warm-up scores it and draws it."""
    t0 = time.time_ns() // 1000 - 400 * 1_000_000
    records = []
    for n in range(400):
        rate = 50.0 + (n % 7) - 3 + (400.0 if 300 <= n < 305 else 0.0)
        records.append((b"okx:book", feed("okx", "book", 10, ts=t0 + n * 1_000_000, rate=rate)))
    await publish(stack.settings, "ops.feed_metrics.v1", records)
    async with tabs(browser, stack) as console:
        await console.login(stack.viewer, "/anomalies")
        await expect(console.page.get_by_role("heading", name="Replay the detector")).to_be_visible()
        await console.page.get_by_label("Replay series").fill("okx:book:collector:rate")
        await console.page.get_by_label("Warm-up points").fill("50")
        await console.page.get_by_role("button", name="Replay").click()
        chart = console.page.get_by_role("img", name=re.compile("replay chart"))
        await expect(chart).to_be_visible(timeout=WAIT_MS)
        await expect(chart).to_have_attribute("data-points", re.compile(r"^[1-9]\d*$"))
        await expect(console.page.get_by_text(re.compile(r"Flagged \d+ of \d+ points"))).to_be_visible()


async def test_every_page_renders_at_desktop_and_phone_width(stack: Stack, browser, tabs) -> None:  # type: ignore[no-untyped-def]
    """Overview, alerts, alert detail, silences, new silence, anomalies (with a replay) and forecasts render with
    their data; with MARKETPRISM_CONSOLE_SCREENSHOTS=1 each is photographed at 1280 and 390 px for docs/console."""
    now = time.time_ns() // 1000
    history = [
        (b"binance:book", feed("binance", "book", 40 + n % 5, ts=now - (300 - n) * 1_000_000, rate=rate))
        for n, rate in ((n, 80.0 + n % 9 + (300.0 if n == 250 else 0.0)) for n in range(300))
    ]
    # okx book latency climbing through the shipped FeedLatencyHigh threshold (2000 ms) two minutes ago
    climb = [(b"okx:book", feed("okx", "book", 300 + 40 * n, ts=now - (120 - n) * 1_000_000)) for n in range(120)]
    scores = [
        (
            f"{ex}:book".encode(),
            msgspec.structs.replace(feed(ex, "book", 50), source="aggregator", health_score=score, lag_p99_us=None),
        )
        for ex, score in (("binance", 97.0), ("okx", 41.0), ("coinbase", 76.0))
    ]
    await publish(stack.settings, "ops.feed_metrics.v1", history + climb + scores)
    fired = now - 78 * 1_000_000
    latency = Alert(
        fingerprint="c0ffee0000000001", rule="FeedLatencyHigh", state="firing", severity="P3",
        labels={"alertname": "FeedLatencyHigh", "severity": "P3", "exchange": "okx", "stream": "book",
                "category": "feed", "team": "market-data"},
        annotations={"summary": "okx book: feed latency p99 4980 ms"},
        ts_event=fired, active_since=fired - 60 * 1_000_000, fired_at=fired, value=4980.0, version=2,
    )  # fmt: skip
    await publish(stack.settings, "ops.alerts.v1", [(latency.fingerprint.encode(), latency)])
    await stack.feed(okx__book=4200, okx__trades=30, coinbase__book=2500, binance__trades=20)
    reference = ReferencePrice(
        asset="BTC-USD", ts_event=now, price="97012.5", venues=3,
        mids={"binance:BTC-USDT": "97010.1", "okx:BTC-USDT": "97015.0", "coinbase:BTC-USD": "97180.0"},
        divergence_bps={"binance:BTC-USDT": -0.2, "okx:BTC-USDT": 0.3, "coinbase:BTC-USD": 17.3},
        excluded={"coinbase:BTC-USD": "diverging"},
    )  # fmt: skip
    await publish(stack.settings, "md.reference.v1", [(b"BTC-USD", reference)])
    anomalies = [
        Anomaly(series_id="binance:book:collector:rate", metric="feed_rate", ts_event=now - 50_000_000, value=380.0,
                score=0.81, detector="robust", exchange="binance", stream="book", expected=84.0, lower=70.0,
                upper=98.0),
        Anomaly(series_id="health:dlq_per_s", metric="dlq_per_s", ts_event=now, value=0.4, score=0.7,
                detector="damped_trend", kind="forecast", time_to_threshold_s=540.0, expected=1.0, lower=0.6,
                upper=1.5),
        Anomaly(series_id="health:consumer_lag:marketprism-sink", metric="consumer_lag", ts_event=now, value=1800.0,
                score=0.55, detector="damped_trend", kind="forecast", time_to_threshold_s=1260.0, expected=5000.0,
                lower=3500.0, upper=7000.0),
    ]  # fmt: skip
    await publish(stack.settings, "ops.anomalies.v1", [(a.series_id.encode(), a) for a in anomalies])

    async with tabs(browser, stack) as console:
        await console.goto("/")
        await expect(console.page.get_by_role("heading", name="Log in")).to_be_visible()
        await console.shot("login")
        await console.login(stack.operator, "/")
        await expect(console.page.get_by_role("heading", name="Venues")).to_be_visible()
        await expect(console.page.get_by_role("rowheader", name="BTC-USD")).to_be_visible(timeout=WAIT_MS)
        await expect(console.page.get_by_role("rowheader", name="okx")).to_be_visible(timeout=WAIT_MS)
        await console.live()
        await console.shot("overview")

        await console.goto("/alerts")
        await expect(console.alert_in_state("LagHigh", "okx", "firing")).to_be_visible(timeout=WAIT_MS)
        await expect(console.alert_in_state("LagHigh", "coinbase", "firing")).to_be_visible(timeout=WAIT_MS)
        await expect(console.alert_in_state("FeedLatencyHigh", "okx", "firing")).to_be_visible(timeout=WAIT_MS)
        await console.shot("alerts", dark=True)
        await console.page.get_by_label("Group by").select_option("exchange")
        await expect(console.page.get_by_role("region", name=re.compile("exchange=okx"))).to_be_visible()

        await console.alert("FeedLatencyHigh", "okx").get_by_role("link", name="FeedLatencyHigh", exact=True).click()
        await expect(console.page.get_by_role("heading", name="Triggering series")).to_be_visible()
        # the shipped rule's series read back from ops.feed_metrics.v1, with its threshold
        await expect(console.page.get_by_role("img", name=re.compile(r"lag_p99_ms > 2000: \d+ points"))).to_be_visible()
        await console.shot("alert-detail")

        await console.goto("/alerts")
        await console.alert("LagHigh", "okx").get_by_role("link", name="Silence").click()
        await expect(console.page.get_by_text("Matches 1 current alert")).to_be_visible()
        await console.shot("silence-new")
        await console.page.get_by_label("Comment").fill("okx book feed maintenance")
        await console.page.get_by_role("button", name="Create silence").click()
        await expect(console.page.get_by_text("okx book feed maintenance")).to_be_visible(timeout=WAIT_MS)
        await console.shot("silences")

        await console.goto("/anomalies?series_id=binance:book:collector:rate")
        await expect(console.page.get_by_role("img", name=re.compile("reported"))).to_be_visible(timeout=WAIT_MS)
        await console.page.get_by_label("Warm-up points").fill("30")
        await console.page.get_by_role("button", name="Replay").click()
        await expect(console.page.get_by_role("img", name=re.compile("replay chart"))).to_be_visible(timeout=WAIT_MS)
        await console.shot("anomalies", dark=True)

        await console.goto("/forecasts")
        await expect(console.page.get_by_role("rowheader", name=re.compile("health:dlq_per_s"))).to_be_visible()
        await expect(console.page.get_by_text("9 min")).to_be_visible()
        await console.shot("forecasts")


async def test_login_refuses_bad_tokens_and_keeps_the_target(stack: Stack, browser, tabs) -> None:  # type: ignore[no-untyped-def]
    async with tabs(browser, stack) as console:
        await console.goto("/forecasts")
        await console.page.get_by_label("Token").fill("not-a-token")
        await console.page.get_by_role("button", name="Log in").click()
        await expect(console.page.get_by_role("alert")).to_have_text("invalid token")
        await console.page.get_by_label("Token").fill(stack.viewer)
        await console.page.get_by_role("button", name="Log in").click()
        await expect(console.page.get_by_role("heading", name="Forecasts")).to_be_visible()
        cookies = await console.page.context.cookies()
        session = next(c for c in cookies if c["name"] == "mp_session")
        assert session["httpOnly"] and session["sameSite"] == "Strict"
        response = await console.page.request.get(f"{stack.url}/")
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "unsafe-inline" not in csp
