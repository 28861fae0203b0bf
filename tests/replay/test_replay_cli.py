"""``marketprism replay --serve`` and ``marketprism collect`` as real processes: the collector runs
unmodified against the replay server with endpoint overrides in its config, serves /metrics, and
every trade of the capture reaches md.trades.v1 once; SIGTERM stops it cleanly."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
import yaml

from pipeline.collectors.capture import read_capture
from pipeline.contracts import Trade
from pipeline.infra import free_port
from pipeline.infra.services import port_open
from pipeline.replay.server import local_url
from pipeline.settings import Settings
from tests.conftest import read_records

ROOT = Path(__file__).resolve().parents[2]
SYMBOLS = ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]


def _start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(
            [str(Path(sys.executable).with_name("marketprism")), *args],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=os.environ.copy(),
        )


def _stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


@pytest.mark.shared
async def test_collect_process_against_replay_process(topics: Settings, replay_dir: Path, tmp_path: Path) -> None:
    capture = replay_dir / "binance.txt"
    expected = sorted(
        str(json.loads(line.payload)["data"]["a"])
        for line in read_capture(capture)
        if line.kind == "ws_in" and '"aggTrade"' in line.payload
    )
    port, metrics_port = free_port(), free_port()
    base = f"127.0.0.1:{port}"
    config = tmp_path / "collect.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "kafka": {"bootstrap_servers": topics.kafka.bootstrap_servers},
                "topic_prefix": topics.topic_prefix,
                "metrics_port": metrics_port,
                "state_dir": str(tmp_path / "state"),
                "venues": {
                    "binance": {
                        "symbols": SYMBOLS,
                        "ws_url": local_url("wss://stream.binance.com:9443", base),
                        "rest_url": local_url("https://api.binance.com", base),
                    }
                },
            }
        )
    )
    replay = _start(["replay", str(capture), "--serve", "--port", str(port)], tmp_path / "replay.log")
    collect = None
    try:
        async with asyncio.timeout(120):
            while not port_open("127.0.0.1", port):
                assert replay.poll() is None, (tmp_path / "replay.log").read_text()
                await asyncio.sleep(0.1)
        collect = _start(["--config", str(config), "collect", "--venue", "binance"], tmp_path / "collect.log")
        got: list[Trade] = []
        async with asyncio.timeout(180):
            while len(got) < len(expected):
                assert collect.poll() is None, (tmp_path / "collect.log").read_text()
                await asyncio.sleep(0.5)
                got = await read_records(topics, "md.trades.v1", Trade)
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{metrics_port}/metrics") as response,
            ):
                metrics = await response.text()
        assert _stop(collect) == 0, (tmp_path / "collect.log").read_text()
    finally:
        if collect is not None:
            _stop(collect)
        _stop(replay)
    assert sorted(t.trade_id for t in got) == expected
    assert 'marketprism_collector_messages_total{exchange="binance"' in metrics
    assert "marketprism_collector_latency_seconds_bucket" in metrics


@pytest.mark.shared
async def test_record_process_writes_the_served_frames(replay_dir: Path, tmp_path: Path) -> None:
    from pipeline.replay.server import ReplayServer

    capture = replay_dir / "binance.txt"
    frames = [line.payload for line in read_capture(capture) if line.kind == "ws_in"]
    server = ReplayServer([capture])
    await server.start()
    config = tmp_path / "record.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "metrics_port": 0,
                "state_dir": str(tmp_path / "state"),
                "venues": {
                    "binance": {
                        "symbols": SYMBOLS,
                        "ws_url": server.url_for("wss://stream.binance.com:9443"),
                        "rest_url": server.url_for("https://api.binance.com"),
                    }
                },
            }
        )
    )
    out = tmp_path / "recorded.txt"
    try:
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("marketprism")),
            "--config",
            str(config),
            "record",
            "--venue",
            "binance",
            "--out",
            str(out),
            "--frames",
            str(len(frames)),
            "--duration",
            "120",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        async with asyncio.timeout(180):
            output, _ = await proc.communicate()
    finally:
        await server.stop()
    assert proc.returncode == 0, output.decode()
    recorded = list(read_capture(out))
    assert [line.payload for line in recorded if line.kind == "ws_in"] == frames
    assert sum(1 for line in recorded if line.kind == "rest") == 4
    assert b"wrote" in output
