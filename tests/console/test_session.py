"""The console's session rules without a browser (the ASGI app over prepared views, no broker): the login form's
own CSRF token, no open redirect after login, expired sessions back to the login page (htmx: HX-Redirect),
CSRF and role checks on every POST, the bearer API ignoring the cookie, bad replay input as a 4xx."""

from __future__ import annotations

import re

import httpx

from pipeline.api.app import create_app
from pipeline.api.console.session import COOKIE
from pipeline.api.views import LiveViews
from tests.api.conftest import alert, api_settings, token


def _client(views: LiveViews | None = None) -> tuple[httpx.AsyncClient, object]:
    settings = api_settings()
    app = create_app(settings, read_topics=False, views=views or LiveViews())
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://console"), settings


async def _login(client: httpx.AsyncClient, bearer: str, next: str = "/") -> httpx.Response:
    page = await client.get("/login")
    login_csrf = re.search(r'name="login_csrf" value="([^"]+)"', page.text)
    assert login_csrf is not None
    return await client.post("/login", data={"token": bearer, "login_csrf": login_csrf.group(1), "next": next})


async def test_login_needs_its_form_token_and_never_redirects_off_site() -> None:
    client, settings = _client()
    async with client:
        forged = await client.post("/login", data={"token": token(settings), "login_csrf": "x", "next": "/"})
        assert forged.status_code == 403 and COOKIE not in forged.cookies
        done = await _login(client, token(settings), next="//evil.example/phish")
        assert done.status_code == 303 and done.headers["location"] == "/"
        cookie = done.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie
        kept = await _login(client, token(settings), next="/forecasts")
        assert kept.headers["location"] == "/forecasts"


async def test_no_or_expired_session_goes_to_login() -> None:
    client, settings = _client()
    async with client:
        first = await client.get("/alerts?state=firing")
        assert first.status_code == 303 and first.headers["location"] == "/login?next=/alerts?state=firing"
        htmx = await client.get("/fragments/alerts", headers={"HX-Request": "true"})
        assert htmx.status_code == 401 and htmx.headers["hx-redirect"] == "/login"
        client.cookies.set(COOKIE, token(settings, ttl=-60))
        expired = await client.get("/")
        assert expired.status_code == 303 and expired.headers["location"].startswith("/login")


async def test_posts_need_the_csrf_token_and_the_role() -> None:
    views = LiveViews()
    views.alerts.apply(alert(1, labels_note="x"))
    client, settings = _client(views)
    async with client:
        await _login(client, token(settings, "victor", "viewer"))
        page = await client.get("/alerts")
        csrf = re.search(r'name="csrf-token" content="([0-9a-f]+)"', page.text)
        assert csrf is not None and "Acknowledge" not in page.text
        refused = await client.post("/alerts/fp00001/ack", data={"csrf_token": csrf.group(1)})
        assert refused.status_code == 403 and "needs operator" in refused.json()["detail"]

        client.cookies.clear()
        await _login(client, token(settings, "alice", "operator"))
        page = await client.get("/alerts")
        assert "Acknowledge" in page.text
        no_token = await client.post("/alerts/fp00001/ack", data={"comment": "x"})
        assert no_token.status_code == 403 and "CSRF" in no_token.json()["detail"]
        wrong = await client.post("/alerts/fp00001/ack", headers={"X-CSRF-Token": "0" * 64})
        assert wrong.status_code == 403
        # the bearer API never takes the cookie
        assert (await client.post("/api/v1/alerts/fp00001/ack", json={})).status_code == 401


async def test_bad_replay_settings_and_series_are_explained() -> None:
    client, settings = _client()
    async with client:
        await _login(client, token(settings, "victor", "viewer"))
        series = "okx:book:collector:rate"
        bad = await client.get("/anomalies/replay", params={"series_id": series, "min_effect": "x"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "min_effect"]
        floor = await client.get("/anomalies/replay", params={"series_id": series, "report_floor": 2})
        assert floor.status_code == 422
        unknown = await client.get("/anomalies/replay", params={"series_id": "<b>nope</b>"})
        assert unknown.status_code == 200 and "not a replayable series" in unknown.text
        assert "<b>nope</b>" not in unknown.text
        preview = await client.get("/silences/preview", params={"matchers": 'exchange=~".*"'})
        assert "must not match every alert" in preview.text
