"""History from ClickHouse (the embedded chdb, tables made and filled by the real sink): an alert's transitions
and notifications, an anomaly series around a time, a market's bars over a range; exact decimals, bounded rows."""

from __future__ import annotations

import msgspec

from pipeline.api.views import LiveViews
from pipeline.contracts import encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.records import Bar, Notification
from pipeline.settings import Settings
from pipeline.sinks.factory import make_sink


async def test_history_reads_what_the_sink_stored(build, asgi, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = build.api_settings(
        Settings(metrics_port=0, clickhouse_url=f"chdb://{tmp_path / 'chdb'}", topic_prefix="h.")
    )
    alerts = [build.alert(1, state=state, version=v) for v, state in ((1, "pending"), (2, "firing"), (3, "acked"))]
    alerts = [msgspec.structs.replace(a, ts_event=build.T0 + a.version) for a in alerts]
    bar: Bar = EXAMPLES[Bar]  # type: ignore[assignment]
    bars = [
        msgspec.structs.replace(
            bar, window_start=bar.window_start + i * 1_000_000, window_end=bar.window_end + i * 1_000_000
        )
        for i in range(10)
    ]
    note = msgspec.structs.replace(EXAMPLES[Notification], fingerprints=["fp00001"])  # type: ignore[type-var]
    anomalies = [msgspec.structs.replace(build.anomaly(1), ts_event=build.T0 + i * 60_000_000) for i in range(5)]
    sink = make_sink(settings.clickhouse_url, load_registry(), settings.topic_prefix)
    await sink.setup()
    for topic, records in (
        ("ops.alerts.v1", alerts), ("md.bars.1s.v1", bars), ("ops.notifications.v1", [note]),
        ("ops.anomalies.v1", anomalies),
    ):  # fmt: skip
        sink.add_batch(f"h.{topic}", 0, list(range(len(records))), [encode(r) for r in records])
    await sink.flush()
    await sink.close()

    client = asgi(LiveViews(), settings)
    h = {"Authorization": f"Bearer {build.token(settings, 'v', 'viewer')}"}
    transitions = (await client.get("/api/v1/alerts/fp00001/history", headers=h)).json()
    assert [(r["version"], r["state"], r["ts_event"]) for r in transitions["rows"]] == [
        (1, "pending", build.T0 + 1), (2, "firing", build.T0 + 2), (3, "acked", build.T0 + 3)
    ]  # fmt: skip
    assert transitions["truncated"] is False
    sent = (await client.get("/api/v1/alerts/fp00001/history", headers=h, params={"kind": "notifications"})).json()
    assert [(r["channel"], r["status"]) for r in sent["rows"]] == [("slack", "sent")]

    start = bar.window_start + 2_000_000
    got = await client.get(
        "/api/v1/markets/kraken/BTC-USD/bars",
        headers=h,
        params={"interval": "1s", "start": start, "end": start + 5_000_000, "limit": 3},
    )
    page = got.json()
    assert [r["window_start"] for r in page["rows"]] == [start, start + 1_000_000, start + 2_000_000]
    assert page["truncated"] is True
    assert (page["rows"][0]["open"], page["rows"][0]["close"], page["rows"][0]["volume"]) == (
        "36500.1",
        "36500.5",
        "1.25",
    )

    around = build.T0 + 120_000_000
    points = await client.get(
        "/api/v1/anomalies/history",
        headers=h,
        params={"series_id": anomalies[0].series_id, "around": around, "window_s": 61},
    )
    assert [r["ts_event"] for r in points.json()["rows"]] == [build.T0 + 60_000_000, around, build.T0 + 180_000_000]
    nothing = await client.get(
        "/api/v1/anomalies/history", headers=h, params={"series_id": "x'; DROP TABLE alerts; --", "around": around}
    )
    assert nothing.status_code == 200 and nothing.json()["rows"] == []
    again = (await client.get("/api/v1/alerts/fp00001/history", headers=h)).json()
    assert len(again["rows"]) == 3
