"""`infra up` is idempotent and `infra down` leaves none of our processes behind (real processes)."""

from __future__ import annotations

from pathlib import Path

import psutil
import pytest
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.infra import free_port
from tests.conftest import unavailable

runner = CliRunner()


def _env(tmp_path: Path) -> dict[str, str]:
    return {
        "MARKETPRISM_STATE_DIR": str(tmp_path),
        "MARKETPRISM_INFRA__BROKER_PORT": str(free_port()),
        "MARKETPRISM_INFRA__CLICKHOUSE_TCP_PORT": str(free_port()),
        "MARKETPRISM_INFRA__CLICKHOUSE_HTTP_PORT": str(free_port()),
    }


def test_up_twice_starts_one_broker_and_down_stops_it(tmp_path: Path) -> None:
    env = _env(tmp_path)
    port = env["MARKETPRISM_INFRA__BROKER_PORT"]
    first = runner.invoke(app, ["infra", "up", "--no-clickhouse"], env=env)
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["infra", "up", "--no-clickhouse"], env=env)
    assert second.exit_code == 0, second.output
    brokers = [
        p
        for p in psutil.process_iter(["cmdline"])
        if p.info["cmdline"] and f"tcp://127.0.0.1:{port}" in " ".join(p.info["cmdline"])
    ]
    assert len(brokers) == 1
    status = runner.invoke(app, ["infra", "status"], env=env)
    assert "running" in status.output and str(brokers[0].pid) in status.output

    down = runner.invoke(app, ["infra", "down"], env=env)
    assert down.exit_code == 0, down.output
    assert not brokers[0].is_running() or brokers[0].status() == psutil.STATUS_ZOMBIE
    again = runner.invoke(app, ["infra", "down"], env=env)
    assert "was not running" in again.output


def test_down_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    """A stale PID file pointing at someone else's process is ignored."""
    import json
    import subprocess
    import time

    env = _env(tmp_path)
    stranger = subprocess.Popen(["sleep", "30"])
    try:
        (tmp_path / "infra").mkdir()
        (tmp_path / "infra" / "broker.pid").write_text(
            json.dumps({"pid": stranger.pid, "argv": ["/x/tansu"], "started": time.time()})
        )
        result = runner.invoke(app, ["infra", "down"], env=env)
        assert "was not running" in result.output
        assert stranger.poll() is None
    finally:
        stranger.kill()
        stranger.wait()


@pytest.mark.clickhouse_server
def test_up_starts_clickhouse_server_when_installed(tmp_path: Path) -> None:
    from pipeline.infra import clickhouse_server_binary

    if clickhouse_server_binary() is None:
        unavailable("clickhouse-server is not installed")
    env = _env(tmp_path)
    try:
        result = runner.invoke(app, ["infra", "up"], env=env)
        assert result.exit_code == 0, result.output
        assert "clickhouse-server: running" in result.output
        from clickhouse_driver import Client

        client = Client("127.0.0.1", port=int(env["MARKETPRISM_INFRA__CLICKHOUSE_TCP_PORT"]))
        assert client.execute("SELECT 1") == [(1,)]
        client.disconnect()
    finally:
        runner.invoke(app, ["infra", "down"], env=env)
    leftovers = [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]
    assert leftovers == []
