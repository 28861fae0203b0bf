"""Scenario validation: every problem is one clear error naming the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.simulator.base import ScenarioError
from pipeline.simulator.scenario import DEFAULT_SCENARIO, load_scenario, scenario_from


def incident(**fields: object) -> dict[str, object]:
    return {"incidents": [{"kind": "price_spike", "venue": "binance", "symbol": "BTC-USDT", "at_s": 1,
                           "duration_s": 2, **fields}]}  # fmt: skip


def test_default_scenario_loads() -> None:
    scenario = load_scenario()
    assert DEFAULT_SCENARIO.is_file()
    assert scenario.incidents and scenario.symbols["binance"] == ["BTC-USDT", "ETH-USDT"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (incident(kind="meteor"), "incidents.0.kind"),
        (incident(venue="ftx"), "incidents.0.venue"),
        (incident(at_s=-1), "incidents.0.at_s"),
        (incident(duration_s=0), "needs duration_s > 0"),
        (incident(symbol=None), "price_spike needs a symbol"),
        (incident(symbol="SOL-USDT"), "binance does not simulate SOL-USDT"),
        (incident(kind="sequence_gap", venue="kraken", symbol="BTC-USD", duration_s=0), "no sequence numbers"),
        (incident(kind="bad_checksum", duration_s=0), "binance books carry no checksum"),
        (incident(kind="bad_checksum", venue="okx", symbol="BTC-USDT"), "point incident"),
        (incident(magnitude_pct=500), "incidents.0.magnitude_pct"),
        (incident(colour="red"), "incidents.0.colour"),
        ({"symbols": {"coinbase": ["BTC-USD-PERP"]}}, "perpetuals are simulated on binance_usdm and okx only"),
        ({"symbols": {"binance_usdm": ["BTC-USDT"]}}, "USD-M symbols are perpetuals"),
        ({"symbols": {"okx": ["btc-usdt"]}}, "not BASE-QUOTE"),
        ({"start": "yesterday"}, "start"),
        ({"duration_s": 0}, "duration_s"),
        (
            {"incidents": [{"id": "x", "kind": "feed_stall", "venue": "okx", "at_s": 1, "duration_s": 1}] * 2},
            "duplicate id",
        ),
    ],
)
def test_invalid_scenarios_name_the_problem(data: dict[str, object], message: str) -> None:
    with pytest.raises(ScenarioError) as err:
        scenario_from(data, "test.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("test.yaml: invalid scenario")


def test_venue_wide_incident_without_symbol_is_fine() -> None:
    scenario = scenario_from({"incidents": [{"kind": "disconnect_storm", "venue": "okx", "at_s": 1, "duration_s": 5}]})
    assert scenario.incident_id(0) == "inc-01"


def test_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ScenarioError, match="cannot read"):
        load_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("incidents: [unclosed")
    with pytest.raises(ScenarioError, match="not YAML"):
        load_scenario(bad)
    bad.write_text("- a list")
    with pytest.raises(ScenarioError, match="a scenario is a mapping"):
        load_scenario(bad)
