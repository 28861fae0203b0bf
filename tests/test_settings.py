"""Settings: environment, YAML file, precedence and errors that name the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.settings import SettingsError, load_settings


def test_defaults_are_embedded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARKETPRISM_CONFIG", raising=False)
    s = load_settings()
    assert s.kafka.bootstrap_servers == "127.0.0.1:19092"
    assert s.clickhouse_url.startswith("chdb://")
    assert set(s.venues) == {"binance", "binance_usdm", "okx", "coinbase", "kraken"}


def test_yaml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "prod.yaml"
    config.write_text(
        "kafka:\n  bootstrap_servers: kafka-1:9093,kafka-2:9093\n  security_protocol: SASL_SSL\n"
        "  sasl_mechanism: SCRAM-SHA-512\n  sasl_username: mp\n  sasl_password: s3cret\n"
        "topic_prefix: prod.\nclickhouse_url: clickhouse://mp:pw@ch:9000/marketprism\n"
        "venues:\n  okx:\n    symbols: [BTC-USDT]\n"
    )
    monkeypatch.setenv("MARKETPRISM_TOPIC_PREFIX", "staging.")
    s = load_settings(config)
    assert s.kafka.bootstrap_servers == "kafka-1:9093,kafka-2:9093"
    assert s.kafka.sasl_password is not None and s.kafka.sasl_password.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(s)
    assert s.topic_prefix == "staging."
    assert s.topic("md.trades.v1") == "staging.md.trades.v1"
    assert list(s.venues) == ["okx"]


@pytest.mark.parametrize(
    ("env", "field"),
    [
        ({"MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": "nohostport"}, "kafka.bootstrap_servers"),
        ({"MARKETPRISM_METRICS_PORT": "99999"}, "metrics_port"),
        ({"MARKETPRISM_CLICKHOUSE_URL": "postgres://x"}, "clickhouse_url"),
        ({"MARKETPRISM_VENUES": '{"bitmex": {}}'}, "venues"),
        ({"MARKETPRISM_KAFKA__SECURITY_PROTOCOL": "TLS"}, "kafka.security_protocol"),
    ],
)
def test_invalid_settings_name_the_field(env: dict[str, str], field: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARKETPRISM_CONFIG", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError, match=field.replace(".", r"\.")):
        load_settings()


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml")


def test_cli_reports_invalid_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    result = CliRunner().invoke(app, ["topics", "list"], env={"MARKETPRISM_METRICS_PORT": "-1"})
    assert result.exit_code == 2
    assert "metrics_port" in result.output
