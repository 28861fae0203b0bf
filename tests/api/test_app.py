"""The API over prepared views (no broker): listing, filters, groups, pagination, field-naming 4xx, auth
(HS256, expiry, nbf, audience, issuer, forged, JWKS RS256/ES256, API keys), roles, rate limit, body limit,
security headers, CORS, the change feed (resume, slow-client drop) and the OpenAPI document."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipeline.api.auth import RateLimiter, key_digest
from pipeline.api.events import EventBus
from pipeline.api.views import LiveViews
from pipeline.settings import ApiKeySettings

OPENAPI = Path(__file__).resolve().parents[2] / "pipeline" / "api" / "openapi.json"


def _views(build, n: int = 30) -> LiveViews:  # type: ignore[no-untyped-def]
    views = LiveViews()
    for i in range(n):
        views.alerts.apply(
            build.alert(
                i,
                severity="P1" if i % 10 == 0 else "P3",
                exchange="okx" if i % 3 == 0 else "binance",
                state="resolved" if i % 5 == 4 else "firing",
            )
        )
    views.silences.apply(build.silence())
    views.anomalies.apply(build.anomaly(1))
    views.anomalies.apply(build.anomaly(2, kind="forecast", exchange="okx"))
    return views


def _auth(build, settings=None, role: str = "viewer", name: str = "alice") -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"Authorization": f"Bearer {build.token(settings or build.api_settings(), name, role)}"}


async def test_alert_list_filters_pages_and_groups(build, asgi) -> None:  # type: ignore[no-untyped-def]
    views = _views(build)
    client = asgi(views)
    h = _auth(build)
    page = (await client.get("/api/v1/alerts", headers=h, params={"limit": 5})).json()
    active = [a for a in views.alerts.by_fingerprint.values() if a.state != "resolved"]
    assert page["total"] == len(active) == 24
    assert [a["severity"] for a in page["items"]][:3] == ["P1", "P1", "P1"]
    assert page["next_offset"] == 5 and len(page["items"]) == 5
    last = (await client.get("/api/v1/alerts", headers=h, params={"limit": 5, "offset": 20})).json()
    assert last["next_offset"] is None and len(last["items"]) == 4

    okx = (await client.get("/api/v1/alerts", headers=h, params={"venue": "okx", "limit": 500})).json()
    assert {a["labels"]["exchange"] for a in okx["items"]} == {"okx"}
    assert okx["total"] == sum(1 for a in active if a.labels["exchange"] == "okx")

    matched = (
        await client.get("/api/v1/alerts", headers=h, params={"filter": ['exchange!="okx"', "severity=~P1|P2"]})
    ).json()
    assert matched["total"] == sum(1 for a in active if a.labels["exchange"] != "okx" and a.severity == "P1")

    everything = (await client.get("/api/v1/alerts", headers=h, params={"include_inactive": True, "limit": 500})).json()
    assert everything["total"] == 30
    resolved = (await client.get("/api/v1/alerts", headers=h, params={"state": "resolved"})).json()
    assert resolved["total"] == 6

    text = (await client.get("/api/v1/alerts", headers=h, params={"q": "s12 stalled"})).json()
    assert [a["fingerprint"] for a in text["items"]] == ["fp00012"]

    groups = (
        await client.get("/api/v1/alerts/groups", headers=h, params={"group_by": ["exchange", "severity"]})
    ).json()
    assert sum(g["count"] for g in groups["groups"]) == groups["total"] == 24
    assert {tuple(g["labels"].values()) for g in groups["groups"]} == {
        ("binance", "P1"), ("binance", "P3"), ("okx", "P1"), ("okx", "P3")
    }  # fmt: skip

    one = (await client.get("/api/v1/alerts/fp00003", headers=h)).json()
    assert one["alert"]["labels"]["exchange"] == "okx" and one["silenced_by"] == ["s1"]


async def test_bad_input_is_a_4xx_naming_the_field(build, asgi) -> None:  # type: ignore[no-untyped-def]
    client = asgi(_views(build))
    h = _auth(build, role="operator")
    bad = await client.get("/api/v1/alerts", headers=h, params={"filter": 'exchange=~"("'})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "filter"]
    assert "bad regex" in bad.json()["detail"][0]["msg"]
    bad = await client.get("/api/v1/alerts", headers=h, params={"limit": 100_000})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "limit"]
    bad = await client.get("/api/v1/alerts", headers=h, params={"state": "exploded"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"][:2] == ["query", "state"]
    missing = await client.get("/api/v1/alerts/nope", headers=h)
    assert missing.status_code == 404 and "fingerprint" in missing.json()["detail"]
    rng = await client.get("/api/v1/markets/binance/BTC-USDT/bars", headers=h, params={"start": 10, "end": 5})
    assert rng.status_code == 422 and rng.json()["detail"][0]["loc"] == ["query", "end"]
    body = await client.post("/api/v1/silences", headers=h, json={"matchers": ["bad matcher"], "duration_s": 60})
    assert body.status_code == 422 and body.json()["detail"][0]["loc"] == ["body", "matchers"]
    body = await client.post("/api/v1/silences", headers=h, json={"matchers": ['a="b"']})
    assert body.status_code == 422 and body.json()["detail"][0]["loc"] == ["body", "ends_at"]
    body = await client.post("/api/v1/silences", headers=h, json={"matchers": ['a=~".*"'], "duration_s": 60})
    assert body.status_code == 422 and "every alert" in body.json()["detail"][0]["msg"]
    body = await client.post("/api/v1/alerts/fp00001/ack", headers=h, json={"comment": "x", "actor": "mallory"})
    assert body.status_code == 422 and body.json()["detail"][0]["loc"] == ["body", "actor"]


async def test_preview_anomalies_forecasts_and_venues(build, asgi) -> None:  # type: ignore[no-untyped-def]
    views = _views(build)
    views.alerts.apply(
        build.alert(99, rule="PriceSpikeAnomaly", exchange="binance", symbol="BTC-USDT", metric="log_return")
    )
    client = asgi(views)
    h = _auth(build)
    preview = (await client.post("/api/v1/silences/preview", headers=h, json={"matchers": ['exchange="okx"']})).json()
    assert {a["labels"]["exchange"] for a in preview["matching_alerts"]} == {"okx"}
    anomalies = (await client.get("/api/v1/anomalies", headers=h)).json()["items"]
    assert [i["anomaly"]["kind"] for i in anomalies] == ["forecast", "anomaly"]
    spike = anomalies[1]
    assert spike["related_alerts"] == ["fp00099"] and "PriceSpikeAnomaly" in spike["suggested_action"]
    forecasts = (await client.get("/api/v1/forecasts", headers=h)).json()["items"]
    assert [f["anomaly"]["time_to_threshold_s"] for f in forecasts] == [120.0]
    silences = (await client.get("/api/v1/silences", headers=h)).json()["items"]
    assert [(s["silence_id"], s["status"]) for s in silences] == [("s1", "active")]
    venues = (await client.get("/api/v1/venues", headers=h)).json()["items"]
    assert {v["exchange"]: v["firing_alerts"] for v in venues}["okx"] == 8


async def test_missing_bad_expired_forged_and_wrong_role(build, asgi) -> None:  # type: ignore[no-untyped-def]
    settings = build.api_settings()
    client = asgi(_views(build), settings)
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/readyz")).json()["ready"] is True
    none = await client.get("/api/v1/alerts")
    assert none.status_code == 401 and none.headers["www-authenticate"].startswith("Bearer")
    assert (await client.get("/metrics")).status_code == 401
    assert (await client.get("/api/v2/alerts")).status_code == 401
    garbage = await client.get("/api/v1/alerts", headers={"Authorization": "Bearer not-a-token"})
    assert garbage.status_code == 401

    now = time.time()
    claims = {"sub": "eve", "role": "admin", "iss": "marketprism", "aud": "marketprism-api", "exp": int(now) + 600}
    forged = jwt.encode(claims, "some-other-secret-of-enough-length-1234", algorithm="HS256")
    answer = await client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {forged}"})
    assert answer.status_code == 401 and "signature" in answer.json()["detail"].lower()
    assert build.SECRET not in answer.text and forged not in answer.text

    unsigned = jwt.encode(claims, key=None, algorithm="none")  # type: ignore[arg-type]
    assert (await client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {unsigned}"})).status_code == 401

    expired = build.token(settings, "alice", "viewer", ttl=-60)
    answer = await client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {expired}"})
    assert answer.status_code == 401 and answer.json()["detail"] == "token expired"

    for wrong in ({"aud": "someone-else"}, {"iss": "elsewhere"}, {"nbf": int(now) + 3600}):
        token = jwt.encode(claims | wrong, build.SECRET, algorithm="HS256")
        answer = await client.get("/api/v1/alerts", headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 401, wrong

    viewer = _auth(build, settings, "viewer")
    assert (await client.get("/api/v1/alerts", headers=viewer)).status_code == 200
    assert (await client.get("/metrics", headers=viewer)).status_code == 200
    denied = await client.post("/api/v1/alerts/fp00001/ack", headers=viewer, json={})
    assert denied.status_code == 403 and "operator" in denied.json()["detail"]
    denied = await client.post("/api/v2/silences", headers=viewer, json={})
    assert denied.status_code in (403, 422)
    who = (await client.get("/api/v1/whoami", headers=_auth(build, settings, "admin", "root"))).json()
    assert who == {"name": "root", "role": "admin", "via": "jwt"}
    metrics = (await client.get("/metrics", headers=viewer)).text
    assert build.SECRET not in metrics and "marketprism_api_auth_failures_total" in metrics


@pytest.fixture
def jwks_server(tmp_path: Path):  # type: ignore[no-untyped-def]
    """An HTTP server for ``tmp_path`` (an identity provider's JWKS endpoint), stopped at the end."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join(10)


@pytest.mark.parametrize(("alg", "where"), [("RS256", "http"), ("ES256", "http"), ("RS256", "file")])
async def test_jwks_signed_tokens(build, asgi, tmp_path: Path, jwks_server: str, alg: str, where: str) -> None:  # type: ignore[no-untyped-def]
    """Tokens of an identity provider, verified against its JWKS (over HTTP as from an OIDC provider, or a file)."""
    private = rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    algorithm = jwt.algorithms.RSAAlgorithm if alg == "RS256" else jwt.algorithms.ECAlgorithm
    jwk = json.loads(algorithm.to_jwk(private.public_key())) | {"kid": "k1", "alg": alg, "use": "sig"}
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [jwk]}))
    url = f"{jwks_server}/jwks.json" if where == "http" else jwks.as_uri()
    settings = build.api_settings(jwks_url=url, jwt_issuer="https://idp.example", jwt_audience="mp")
    client = asgi(LiveViews(), settings)
    claims = {"sub": "carol", "roles": ["viewer", "operator"], "iss": "https://idp.example", "aud": "mp",
              "exp": int(time.time()) + 300, "nbf": int(time.time()) - 5}  # fmt: skip
    good = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k1"})
    who = await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {good}"})
    assert who.status_code == 200 and who.json() == {"name": "carol", "role": "operator", "via": "jwt"}
    other = rsa.generate_private_key(65537, 2048) if alg == "RS256" else ec.generate_private_key(ec.SECP256R1())
    forged = jwt.encode(claims, other, algorithm=alg, headers={"kid": "k1"})
    assert (await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {forged}"})).status_code == 401
    unknown_kid = jwt.encode(claims, private, algorithm=alg, headers={"kid": "k2"})
    assert (await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {unknown_kid}"})).status_code == 401
    # an HS256 token signed with the public key as secret (algorithm confusion) is refused
    confused = jwt.encode(claims, build.SECRET + "x", algorithm="HS256")
    assert (await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {confused}"})).status_code == 401


async def test_api_keys_are_stored_hashed(build, asgi) -> None:  # type: ignore[no-untyped-def]
    key = "mpk_test_key_value"
    settings = build.api_settings(api_keys={"bot": ApiKeySettings(sha256=key_digest(key), role="viewer")})
    assert key not in repr(settings) and key_digest(key) not in repr(settings)
    client = asgi(LiveViews(), settings)
    who = await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
    assert who.json() == {"name": "bot", "role": "viewer", "via": "api_key"}
    assert (await client.get("/api/v1/whoami", headers={"Authorization": "Bearer mpk_wrong"})).status_code == 401


async def test_rate_limit_body_limit_headers_and_cors(build, asgi) -> None:  # type: ignore[no-untyped-def]
    settings = build.api_settings(rate_limit_per_s=0.001, rate_limit_burst=3, max_body_bytes=1000)
    client = asgi(LiveViews(), settings)
    h = _auth(build, settings, "operator")
    codes = [(await client.get("/api/v1/whoami", headers=h)).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    limited = await client.get("/api/v1/whoami", headers=h)
    assert int(limited.headers["retry-after"]) >= 1
    other = _auth(build, settings, "viewer", name="bob")
    assert (await client.get("/api/v1/whoami", headers=other)).status_code == 200  # per token

    big = await client.post("/api/v1/silences/preview", headers=other, content=b"x" * 5000)
    assert big.status_code == 413
    answer = await client.get("/healthz")
    assert answer.headers["x-content-type-options"] == "nosniff" and answer.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in answer.headers
    assert "access-control-allow-origin" not in (await client.get("/healthz", headers={"Origin": "https://x"})).headers

    cors = asgi(LiveViews(), build.api_settings(cors_origins=["https://console.example"]))
    answer = await cors.get("/healthz", headers={"Origin": "https://console.example"})
    assert answer.headers["access-control-allow-origin"] == "https://console.example"


def test_rate_limiter_refills_on_its_clock() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=2, clock=lambda: now[0])
    assert [limiter.take("a") for _ in range(3)][:2] == [0.0, 0.0]
    assert limiter.take("a") > 0
    now[0] += 0.5
    assert limiter.take("a") == 0.0


async def test_event_bus_resume_and_slow_client_drop(build) -> None:  # type: ignore[no-untyped-def]
    bus = EventBus(ring_size=5, queue_size=3)
    fast = bus.subscribe(lambda e: True)
    slow = bus.subscribe(lambda e: True)
    first = bus.publish("alert", build.alert(1))
    for _ in range(2):
        bus.publish("alert", build.alert(2))
        await asyncio.sleep(0)
        fast.queue.get_nowait()
    fast.queue.get_nowait()
    bus.publish("alert", build.alert(3))
    assert slow.dropped and slow.queue.qsize() == 1 and slow.queue.get_nowait().kind == "dropped"
    assert not fast.dropped and bus.subscribers == 1

    resumed = bus.subscribe(lambda e: True, last_event_id=first.id)
    assert [resumed.queue.get_nowait().seq for _ in range(resumed.queue.qsize())] == [2, 3, 4]
    for _ in range(6):
        bus.publish("anomaly", build.anomaly(1))
    stale = bus.subscribe(lambda e: True, last_event_id=first.id)
    assert stale.queue.get_nowait().kind == "reset"
    foreign = bus.subscribe(lambda e: True, last_event_id="other-1")
    assert foreign.queue.get_nowait().kind == "reset"


async def test_openapi_document_is_3_1_and_checked_in(build, asgi) -> None:  # type: ignore[no-untyped-def]
    client = asgi(LiveViews())
    doc = (await client.get("/openapi.json")).json()
    assert doc["openapi"].startswith("3.1")
    paths = set(doc["paths"])
    assert {
        "/api/v1/alerts",
        "/api/v1/stream",
        "/api/v2/alerts",
        "/api/v2/silences",
        "/api/v2/silence/{silence_id}",
    } <= paths
    checked_in = OPENAPI
    served = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    if await asyncio.to_thread(checked_in.read_text) != served:
        pytest.fail(f"{checked_in} differs from the served document: run `marketprism api openapi --write`")


async def test_cached_pages_are_the_same_bytes_checked_the_same_way(build, asgi) -> None:  # type: ignore[no-untyped-def]
    """The page cache answers a repeated query without FastAPI's machinery: same bytes, same auth and rate
    limit; a change of the alerts view invalidates it."""
    views = _views(build)
    settings = build.api_settings(rate_limit_per_s=0.001, rate_limit_burst=4)
    client = asgi(views, settings)
    h = _auth(build, settings)
    params = {"venue": "okx", "limit": 3}
    first = await client.get("/api/v1/alerts", headers=h, params=params)
    second = await client.get("/api/v1/alerts", headers=h, params=params)
    assert first.status_code == second.status_code == 200 and first.content == second.content
    assert second.headers["x-content-type-options"] == "nosniff"
    assert (await client.get("/api/v1/alerts", params=params)).status_code == 401
    forged = jwt.encode({"sub": "eve", "role": "admin"}, "another-secret-another-secret-1234", algorithm="HS256")
    answer = await client.get("/api/v1/alerts", params=params, headers={"Authorization": f"Bearer {forged}"})
    assert answer.status_code == 401
    views.alerts.apply(build.alert(3, state="resolved", exchange="okx", version=5))
    third = await client.get("/api/v1/alerts", headers=h, params=params)
    assert third.json()["total"] == first.json()["total"] - 1
    codes = [(await client.get("/api/v1/alerts", headers=h, params=params)).status_code for _ in range(2)]
    assert codes == [200, 429]  # a burst of 4: the cached path takes from the same bucket


async def test_fast_path_reads_queries_as_fastapi_does(build, asgi) -> None:  # type: ignore[no-untyped-def]
    """Plain list queries are answered without FastAPI (parse_alert_page); each answer is byte-identical to the
    route's own (forced by an extra parameter the fast path leaves to FastAPI, which ignores it), and anything
    the fast path does not read reaches the route, which refuses what is invalid."""
    from pipeline.api.service import parse_alert_page, sort_key

    views = _views(build, 60)
    client = asgi(views)
    h = _auth(build)
    plain = [
        "",
        "limit=7",
        "offset=10&limit=5",
        "venue=okx&venue=binance&limit=3",
        "severity=P1&include_inactive=true",
        "state=resolved&state=firing&limit=500",
        "filter=exchange%3D%22okx%22&filter=severity%3D~%22P%5B13%5D%22",
        "q=Rule&rule=Rule1&rule=Rule2",
        "q=a+b",
        "include_inactive=false&offset=100000",
    ]
    for query in plain:
        assert parse_alert_page(query) is not None, query
        fast = await client.get(f"/api/v1/alerts?{query}", headers=h)
        routed = await client.get(f"/api/v1/alerts?{query}&unread=1", headers=h)
        assert fast.status_code == routed.status_code == 200, query
        assert fast.content == routed.content, query
        parsed = parse_alert_page(query)
        assert parsed is not None
        selection, offset, limit = parsed
        selected = sorted((a for a in views.alerts.by_fingerprint.values() if selection.accepts(a)), key=sort_key)
        following = offset + limit if offset + limit < len(selected) else None
        doc = {"items": selected[offset : offset + limit], "total": len(selected), "offset": offset, "limit": limit}
        assert fast.content == msgspec.json.encode(doc | {"next_offset": following}), query  # the joined page
    refused = ["limit=0", "limit=501", "offset=100001", "state=bogus", "severity=P9", "filter=%3D%3D", "limit=x"]
    for query in refused:
        assert parse_alert_page(query) is None, query
        assert (await client.get(f"/api/v1/alerts?{query}", headers=h)).status_code == 422, query
    for query in ["q=", "limit=5&limit=6", "include_inactive=1", "offset=%EF%BC%91", "venue=" + "v" * 51]:
        assert parse_alert_page(query) is None, query  # left to FastAPI, which answers it its own way


async def _frames(response, count: int) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    frames: list[dict[str, str]] = []
    current: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line.startswith(("id:", "event:", "data:")):
            name, _, value = line.partition(": ")
            current[name] = value
        elif not line and current:
            frames.append(current)
            current = {}
            if len(frames) == count:
                return frames
    return frames


async def test_stream_filters_and_resumes_with_last_event_id(build, served) -> None:  # type: ignore[no-untyped-def]
    settings = build.api_settings()
    async with served(settings, read_topics=False, views=LiveViews()) as api:
        bus = api.app.state.api.bus
        async with api.client(build.token(settings, "v", "viewer")) as client:
            params = {"kind": "alert", "venue": "okx"}
            async with client.stream("GET", "/api/v1/stream", params=params) as response:
                assert response.headers["content-type"].startswith("text/event-stream")
                bus.publish("alert", build.alert(1, exchange="binance"))  # filtered out
                bus.publish("anomaly", build.anomaly(1, exchange="okx"))  # another kind
                first = bus.publish("alert", build.alert(2, exchange="okx"))
                got = await asyncio.wait_for(_frames(response, 1), 30)
            assert [(f["id"], f["event"]) for f in got] == [(first.id, "alert")]
            assert json.loads(got[0]["data"])["fingerprint"] == "fp00002"
            bus.publish("alert", build.alert(3, exchange="okx"))
            bus.publish("alert", build.alert(4, exchange="binance"))
            headers = {"Last-Event-ID": first.id}
            async with client.stream("GET", "/api/v1/stream", params=params, headers=headers) as response:
                got = await asyncio.wait_for(_frames(response, 1), 30)
            assert [json.loads(f["data"])["fingerprint"] for f in got] == ["fp00003"]
            async with client.stream("GET", "/api/v1/stream", headers={"Last-Event-ID": "old-7"}) as response:
                got = await asyncio.wait_for(_frames(response, 1), 30)
            assert got[0]["event"] == "reset"
        async with api.client() as anonymous:
            assert (await anonymous.get("/api/v1/stream")).status_code == 401


async def test_market_and_venue_views(build, asgi) -> None:  # type: ignore[no-untyped-def]
    import msgspec

    from pipeline.contracts.examples import EXAMPLES
    from pipeline.contracts.records import Bar, Bbo, FeedMetrics, ReferencePrice

    views = LiveViews()
    bbo: Bbo = EXAMPLES[Bbo]  # type: ignore[assignment]
    bar: Bar = EXAMPLES[Bar]  # type: ignore[assignment]
    views.markets.apply_bbo(bbo)
    views.markets.apply_bbo(msgspec.structs.replace(bbo, ts_event=bbo.ts_event - 1, bid_price="1"))  # older: ignored
    views.markets.apply_bar(bar)
    views.markets.apply_bar(msgspec.structs.replace(bar, interval="1m"))
    views.markets.apply_reference(EXAMPLES[ReferencePrice])  # type: ignore[arg-type]
    fm: FeedMetrics = EXAMPLES[FeedMetrics]  # type: ignore[assignment]
    views.feeds.apply(msgspec.structs.replace(fm, source="aggregator", health_score=80.0))
    views.feeds.apply(msgspec.structs.replace(fm, stream="book", source="aggregator", health_score=55.5))
    views.feeds.apply(msgspec.structs.replace(fm, exchange="okx"))
    views.alerts.apply(build.alert(1, exchange="binance"))
    client = asgi(views)
    h = _auth(build)
    markets = (await client.get("/api/v1/markets", headers=h)).json()["items"]
    by_market = {m["market"]: m for m in markets}
    market = f"{bbo.exchange}:{bbo.symbol}"
    assert by_market[market]["bbo"]["bid_price"] == bbo.bid_price
    one = (await client.get(f"/api/v1/markets/{bbo.exchange}/{bbo.symbol}", headers=h)).json()["items"][0]
    assert one["bbo"]["ask_price"] == bbo.ask_price
    kraken = by_market[f"{bar.exchange}:{bar.symbol}"]
    assert (kraken["bar_1s"]["close"], kraken["bar_1m"]["interval"]) == (bar.close, "1m")
    assert kraken["reference"]["price"] == EXAMPLES[ReferencePrice].price  # type: ignore[attr-defined]
    assert (await client.get("/api/v1/markets/okx/NOPE-USDT", headers=h)).status_code == 404
    venues = {v["exchange"]: v for v in (await client.get("/api/v1/venues", headers=h)).json()["items"]}
    assert venues["binance"]["health_score"] == 55.5 and venues["binance"]["firing_alerts"] == 1
    assert venues["okx"]["health_score"] is None and len(venues["okx"]["streams"]) == 1


async def test_alertmanager_v2_shapes(build, asgi) -> None:  # type: ignore[no-untyped-def]
    import msgspec

    views = _views(build, n=6)
    views.alerts.apply(msgspec.structs.replace(build.alert(7, exchange="okx", state="silenced"), actor="silence:s1"))
    inhibited = build.alert(8, state="silenced", exchange="kraken")
    views.alerts.apply(
        msgspec.structs.replace(inhibited, actor="inhibition", comment="inhibited by VenueDown (fp00001) {x}")
    )
    views.alerts.apply(build.alert(9, state="pending"))
    client = asgi(views)
    h = _auth(build)
    every = (await client.get("/api/v2/alerts", headers=h)).json()
    states = {a["fingerprint"]: a["status"] for a in every}
    assert "fp00009" not in states  # pending alerts are not sent to Alertmanager either
    assert states["fp00007"] == {"state": "suppressed", "silencedBy": ["s1"], "inhibitedBy": []}
    assert states["fp00008"] == {"state": "suppressed", "silencedBy": [], "inhibitedBy": ["fp00001"]}
    assert states["fp00000"]["state"] == "active"
    assert every[0]["receivers"] == [{"name": "marketprism"}] and every[0]["startsAt"].endswith("Z")
    active = (await client.get("/api/v2/alerts", headers=h, params={"silenced": False, "inhibited": False})).json()
    assert {a["status"]["state"] for a in active} == {"active"}
    okx = (await client.get("/api/v2/alerts", headers=h, params={"filter": ['exchange="okx"']})).json()
    assert {a["labels"]["exchange"] for a in okx} == {"okx"}
    assert (await client.get("/api/v2/alerts", headers=h, params={"receiver": "other"})).json() == []
    bad = await client.get("/api/v2/alerts", headers=h, params={"filter": "not a matcher"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "filter"]
    groups = (await client.get("/api/v2/alerts/groups", headers=h)).json()
    assert sum(len(g["alerts"]) for g in groups) == len(every)
    assert all(g["labels"]["alertname"] == g["alerts"][0]["labels"]["alertname"] for g in groups)
    status = (await client.get("/api/v2/status", headers=h)).json()
    assert status["cluster"]["status"] == "ready" and "version" in status["versionInfo"]
    silences = (await client.get("/api/v2/silences", headers=h)).json()
    assert [(s["id"], s["status"]["state"], s["matchers"]) for s in silences] == [
        ("s1", "active", [{"name": "exchange", "value": "okx", "isRegex": False, "isEqual": True}])
    ]
    assert (await client.get("/api/v2/silence/nope", headers=h)).status_code == 404
    matched = await client.get("/api/v2/silences", headers=h, params={"filter": 'exchange="kraken"'})
    assert matched.json() == []


async def test_stream_heartbeats_and_drops_a_client_that_falls_behind(build, served) -> None:  # type: ignore[no-untyped-def]
    """Heartbeat comments while idle; a subscriber whose queue is full gets `dropped` and the stream ends."""
    settings = build.api_settings(sse_heartbeat_s=0.2, sse_queue=5)
    async with served(settings, read_topics=False, views=LiveViews()) as api:
        bus = api.app.state.api.bus
        client = api.client(build.token(settings, "v", "viewer"))
        async with client, client.stream("GET", "/api/v1/stream", params={"kind": "alert"}) as response:
            lines = response.aiter_lines()

            async def until_line(wanted: str) -> None:
                async for line in lines:
                    if line.startswith(wanted):
                        return

            await asyncio.wait_for(until_line(": heartbeat"), 30)
            # the server's subscriber is registered once the stream started; fill its queue past the bound
            # without letting the event loop run its writer in between
            for n in range(20):
                bus.publish("alert", build.alert(n))
            assert bus.subscribers == 0
            await asyncio.wait_for(until_line("event: dropped"), 30)
            rest = [line async for line in lines]  # the server ends the response after `dropped`
            assert all(not line.startswith("event: alert") for line in rest)


def test_views_change_only_on_news(build) -> None:  # type: ignore[no-untyped-def]
    """A record read again (a reconnect, a compaction copy) is no change: nothing is streamed twice."""
    views = LiveViews()
    assert views.alerts.apply(build.alert(1, version=2))
    assert not views.alerts.apply(build.alert(1, version=2))
    assert not views.alerts.apply(build.alert(1, state="pending", version=1))
    assert views.alerts.apply(build.alert(1, state="resolved", version=3))
    silence = build.silence("s1")
    assert views.silences.apply(silence) and not views.silences.apply(silence)


async def test_alertmanager_times_follow_a_scaled_pipeline_clock(build, asgi) -> None:  # type: ignore[no-untyped-def]
    """With the pipeline clock 4x faster (`demo --speed 4`), amtool's wall-clock silence maps onto pipeline time."""
    from pipeline import clock as clocks
    from pipeline.api.alertmanager import rfc3339, to_micros

    now = time.time_ns() // 1000
    scaled = clocks.ScaledClock(4.0, now - 3_600_000_000, now - 900_000_000)  # started 15 wall minutes ago
    previous = clocks.process_clock()
    clocks._process_clock = scaled
    try:
        from datetime import UTC, datetime

        moment = datetime.fromtimestamp(now / 1e6, UTC)
        pipeline_now = to_micros(moment)
        assert abs(pipeline_now - scaled.at(now)) <= 1
        assert rfc3339(pipeline_now).startswith(moment.isoformat(timespec="seconds")[:19])
    finally:
        clocks._process_clock = previous
