"""Every shipped core rule fires in a scenario of real record shapes and resolves when it clears."""

from __future__ import annotations

from pipeline.alerting.rules import load_rules


def test_at_least_twelve_core_rules_ship_and_each_has_a_scenario(core_scenarios) -> None:  # type: ignore[no-untyped-def]
    names = [r.name for r in load_rules().rules]
    assert len(names) >= 12
    assert sorted(s.rule for s in core_scenarios) == sorted(names)


def test_core_rule_fires_and_resolves(scenario, rec, core_scenario) -> None:  # type: ignore[no-untyped-def]
    sc = scenario()
    sc.run(core_scenario.until, core_scenario.step, lambda t: core_scenario.make(rec, t))
    states = [s for _, s in sc.transitions(core_scenario.rule, **core_scenario.labels)]
    assert "firing" in states, sc.transitions()
    assert states[-1] == "resolved", sc.transitions(core_scenario.rule)
    fired = next(a for a in sc.alerts if a.rule == core_scenario.rule and a.state == "firing")
    assert "<missing>" not in fired.annotations["summary"] and "n/a" not in fired.annotations["summary"]
    others = {a.rule for a in sc.alerts if a.state == "firing"} - {core_scenario.rule}  # pending then inhibited is fine
    assert not others, f"scenario also fired {others}"
