"""Rule files are validated at load; errors name the file, the rule and the field."""

from __future__ import annotations

import pytest

from pipeline.alerting.errors import RuleLoadError
from pipeline.alerting.rules import load_rules, parse_duration, parse_rule_file

GOOD = """
rules:
  - name: LagHigh
    severity: P2
    by: [exchange, stream]
    condition: {type: threshold, source: feed_metrics, metric: lag_p99_ms, op: ">", value: 1000}
    for: 1m
    keep_firing_for: 90s
"""


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (GOOD.replace("P2", "P7"), "bad.yaml: rule LagHigh: severity"),
        (GOOD.replace("lag_p99_ms", "lag"), "bad.yaml: rule LagHigh: condition: Value error, unknown metric 'lag'"),
        (GOOD.replace('">"', '"=>"'), "bad.yaml: rule LagHigh: condition.op"),
        (GOOD.replace("1m", "soon"), "bad.yaml: rule LagHigh: for: Value error, expected a duration"),
        (
            GOOD.replace("feed_metrics", "kafka"),
            "bad.yaml: rule LagHigh: condition.source: Value error, unknown source",
        ),
        (GOOD.replace("[exchange, stream]", "[symbol]"), "no label(s) ['symbol'] named in by"),
        (GOOD.replace("keep_firing_for", "keep_firing"), "bad.yaml: rule LagHigh: keep_firing: Extra inputs"),
        (GOOD + "    annotations: {summary: '{venue} is slow'}\n", "annotations.summary: template names ['venue']"),
        (GOOD.replace("threshold", "median"), "bad.yaml: rule LagHigh: condition: Input tag 'median'"),
        ("rules: [", "bad.yaml: not valid YAML"),
    ],
)
def test_invalid_rules_name_file_rule_and_field(text: str, message: str) -> None:
    with pytest.raises(RuleLoadError) as info:
        parse_rule_file(text, "bad.yaml")
    assert message in str(info.value)


def test_duplicate_rule_names_across_files_are_rejected(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a.yaml").write_text(GOOD)
    (tmp_path / "b.yaml").write_text(GOOD)
    with pytest.raises(RuleLoadError, match=r"b.yaml: rule LagHigh: name: already defined in .*a.yaml"):
        load_rules([tmp_path], core=False)


def test_core_rules_load_with_user_rules_and_durations_parse(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "mine.yaml").write_text(GOOD)
    rules = load_rules([tmp_path / "mine.yaml"])
    lag = rules.rule("LagHigh")
    assert (lag.for_, lag.keep_firing_for) == (60_000_000, 90_000_000)
    assert len(rules.rules) >= 13 and rules.inhibit_rules
    assert [parse_duration(v) for v in ("250ms", "2h", 5, "1.5s", "0")] == [
        250_000,
        7_200_000_000,
        5_000_000,
        1_500_000,
        0,
    ]
