"""The replay server serves a capture's frames and REST bodies; ``Recorder`` writes them back in the
same format (recording the replay server itself)."""

from __future__ import annotations

import json
from pathlib import Path

import aiohttp
import pytest

from pipeline.collectors.capture import read_capture
from pipeline.collectors.venues import VENUES
from pipeline.replay.recorder import Recorder
from pipeline.replay.server import ReplayServer, local_url


def test_local_url_puts_the_recorded_host_into_the_path() -> None:
    assert (
        local_url("wss://stream.binance.com:9443/stream?streams=a@trade", "127.0.0.1:9")
        == "ws://127.0.0.1:9/stream.binance.com:9443/stream?streams=a@trade"
    )
    assert local_url("https://api.binance.com", "h:1") == "http://h:1/api.binance.com"


@pytest.mark.shared
async def test_rest_bodies_are_served_at_the_recorded_path_and_query(replay_dir: Path) -> None:
    capture = replay_dir / "binance.txt"
    recorded = {line.endpoint: line.payload for line in read_capture(capture) if line.kind == "rest"}
    server = ReplayServer([capture])
    await server.start()
    try:
        async with aiohttp.ClientSession() as session:
            for endpoint, body in recorded.items():
                url = server.url_for(endpoint.replace("symbol=", "limit=1000&symbol=").replace("&limit=1000", "", 1))
                async with session.get(url) as response:  # query order does not matter
                    assert response.status == 200
                    assert await response.text() == body
            async with session.get(server.url_for("https://api.binance.com/api/v3/depth?symbol=NOPE")) as response:
                assert response.status == 404
                assert "NKNUSDT" in await response.text()  # says what is recorded
    finally:
        await server.stop()


@pytest.mark.shared
@pytest.mark.parametrize("speed", [0.0, 60.0])  # as fast as possible, and the recorded gaps scaled 60x down
async def test_recording_the_replay_server_reproduces_the_capture(
    replay_dir: Path, tmp_path: Path, speed: float
) -> None:
    capture = replay_dir / "binance.txt"
    lines = list(read_capture(capture))
    frames = [line.payload for line in lines if line.kind == "ws_in"]
    bodies = {line.endpoint.split("symbol=")[1].split("&")[0]: line.payload for line in lines if line.kind == "rest"}
    server = ReplayServer([capture], speed=speed)
    await server.start()
    venue_cls = VENUES["binance"]
    venue = venue_cls(
        ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"],
        ws_url=server.url_for(venue_cls.ws_url),
        rest_url=server.url_for(venue_cls.rest_url),
    )
    out = tmp_path / "recorded.txt"
    try:
        with out.open("w") as handle:
            written = await Recorder(venue, handle, max_frames=len(frames)).run(duration_s=120)
    finally:
        await server.stop()

    recorded = list(read_capture(out))
    assert len(recorded) == written
    assert recorded[0].kind == "connect" and recorded[0].endpoint.startswith(server.url_for(venue_cls.ws_url))
    assert [line.payload for line in recorded if line.kind == "ws_in"] == frames  # byte for byte, in order
    rest = [line for line in recorded if line.kind == "rest"]
    assert {line.endpoint.split("symbol=")[1].split("&")[0]: line.payload for line in rest} == bodies
    assert all(json.loads(line.payload)["lastUpdateId"] for line in rest)
    stamps = [line.ts_recv_us for line in recorded if line.kind == "ws_in"]
    assert stamps == sorted(stamps)
