"""The loopback server: byte-identical per-connection frames and labels across runs, REST endpoints,
status, and the ``marketprism simulate`` command."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
from typer.testing import CliRunner

from pipeline.bench.simulator import collect, subscribed_keys
from pipeline.cli import app
from pipeline.simulator.engine import Engine
from pipeline.simulator.labels import Label, LabelWriter, read_labels
from pipeline.simulator.scenario import load_scenario
from pipeline.simulator.server import SimulatorServer


async def serve_once(path: Path, duration_s: float) -> tuple[dict[str, list[str]], list[Label]]:
    scenario = load_scenario(duration_s=duration_s)
    writer = LabelWriter(path)
    async with SimulatorServer(scenario, speed=0.0, hold=True, on_label=writer) as server:
        runner = asyncio.create_task(server.run())
        received, _ = await collect(server.port, scenario)
        await asyncio.wait_for(runner, 120)
    writer.close()
    return received, server.engine.labels


async def test_same_seed_same_bytes_over_websockets(tmp_path: Path) -> None:
    first, labels_first = await serve_once(tmp_path / "a.jsonl", 100)
    second, labels_second = await serve_once(tmp_path / "b.jsonl", 100)
    assert set(first) == {"binance", "binance_usdm", "okx", "coinbase", "kraken"}
    for venue, texts in first.items():
        assert len(texts) > 500, venue
        assert texts == second[venue], venue
    assert labels_first == labels_second
    assert (tmp_path / "a.jsonl").read_bytes() == (tmp_path / "b.jsonl").read_bytes()
    assert len(read_labels(tmp_path / "a.jsonl")) == sum(1 for inc in load_scenario().incidents if inc.at_s <= 100)
    # the server sends exactly the pure generator's frames, in its order (after the subscribe replies)
    engine = Engine(load_scenario(duration_s=100))
    keys = subscribed_keys(engine, engine.scenario)
    pure = [f.text for f in engine.run() if f.venue == "okx" and f.key in keys["okx"]]
    served = [t for t in first["okx"] if not t.startswith('{"event"') and '"action":"snapshot"' not in t]
    assert served == pure
    # the Coinbase connection numbers every message it receives
    seqs = [json.loads(t)["sequence_num"] for t in first["coinbase"] if t.startswith('{"channel"')]
    assert seqs == list(range(len(seqs)))


async def test_rest_and_status_endpoints() -> None:
    scenario = load_scenario(duration_s=5)
    async with SimulatorServer(scenario, speed=0.0, hold=True) as server:
        base = f"http://127.0.0.1:{server.port}"
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/binance/api/v3/depth", params={"symbol": "BTCUSDT", "limit": "5"}) as r:
                depth = await r.json()
                assert r.status == 200 and len(depth["bids"]) == 5 and depth["lastUpdateId"] > 0
            async with http.get(f"{base}/binance/api/v3/depth", params={"symbol": "NOPE"}) as r:
                assert r.status == 400 and (await r.json())["code"] == -1121
            async with http.get(f"{base}/binance_usdm/fapi/v1/openInterest", params={"symbol": "BTCUSDT"}) as r:
                assert r.status == 200 and (await r.json())["symbol"] == "BTCUSDT"
            async with http.get(f"{base}/ftx/api") as r:
                assert r.status == 404
            async with http.get(f"{base}/sim/status") as r:
                status = await r.json()
                assert status["started"] is False and status["now_us"] == scenario.start_us
            async with http.ws_connect(f"ws://127.0.0.1:{server.port}/okx/ws/v5/public") as ws:
                await ws.send_str("ping")
                assert await ws.receive_str(timeout=10) == "pong"
            async with http.post(f"{base}/sim/start") as r:
                assert r.status == 200
            await asyncio.wait_for(server.run(), 60)
            async with http.get(f"{base}/sim/status") as r:
                assert (await r.json())["finished"] is True


def test_simulate_command_writes_labels(tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    result = CliRunner().invoke(
        app,
        ["simulate", "--duration", "25", "--speed", "0", "--port", "0", "--labels", str(labels)],
        env={"MARKETPRISM_METRICS_PORT": "0"},
    )
    assert result.exit_code == 0, result.output
    assert "ws_url: ws://127.0.0.1:" in result.output and "/okx/ws/v5/public" in result.output
    assert [label.kind for label in read_labels(labels)] == ["price_spike"]


def test_simulate_command_rejects_a_bad_scenario(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("incidents: [{kind: sequence_gap, venue: kraken, symbol: BTC-USD, at_s: 1}]\n")
    result = CliRunner().invoke(
        app, ["simulate", "--scenario", str(bad), "--port", "0"], env={"MARKETPRISM_METRICS_PORT": "0"}
    )
    assert result.exit_code == 2
    assert "no sequence numbers" in result.output
