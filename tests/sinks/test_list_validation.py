"""The sink's whole-list validation (patterns checked per column) accepts exactly what each topic's
contract decoder accepts, and decodes the same records."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contracts import load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.sinks.validation import ListValidator, lifted

TOPICS = [t for t in load_registry() if lifted(t.record_type)[1]]

# Strings around the decimal and symbol patterns: valid ones, and near misses that ``re.search`` with
# ``^...$`` treats subtly (a trailing newline passes ``$``; non-ASCII digits fail ``[0-9]``).
TRICKY = [
    "0",
    "-1.5",
    "36000.01000000",
    "1.5\n",
    "1.5\n\n",
    "\n1.5",
    "1.",
    ".5",
    "+1",
    "1e5",
    "",
    " 1",
    "١٢",
    "BTC-USDT",
    "BTC-USDT-PERP",
    "BTC-USDT\n",
    "btc-usdt",
    "BTC_USDT",
    "BTC-",
    "12345678901234567890.123456789012345678",
]
values = st.one_of(
    st.sampled_from(TRICKY),
    st.from_regex(r"-?[0-9]{1,6}(\.[0-9]{1,8})?", fullmatch=True),
    st.text(max_size=6),
    st.none(),
)


def _record_type_check(topic_index: int, draws: list[dict[str, object]]) -> None:
    topic = TOPICS[topic_index]
    validator = ListValidator(topic.record_type)
    base = msgspec.to_builtins(EXAMPLES[topic.record_type])
    encoded = [msgspec.json.encode(base | draw) for draw in draws]
    strict: list[object] = []
    for value in encoded:
        try:
            strict.append(validator.strict.decode(value))
        except msgspec.ValidationError:
            strict.append(None)
    records = validator.decode_all(encoded)
    if any(r is None for r in strict):
        assert records is None
    else:
        assert records is not None
        assert [msgspec.to_builtins(r) for r in records] == [msgspec.to_builtins(r) for r in strict]
        assert all(isinstance(r, topic.record_type) for r in records)


@pytest.mark.parametrize("topic_index", range(len(TOPICS)), ids=[t.name for t in TOPICS])
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_list_validation_accepts_exactly_what_the_contract_accepts(topic_index: int, data: st.DataObject) -> None:
    fields = [name for name, _, _ in lifted(TOPICS[topic_index].record_type)[1]]
    draws = data.draw(st.lists(st.dictionaries(st.sampled_from(fields), values, max_size=2), min_size=1, max_size=4))
    _record_type_check(topic_index, draws)


def test_every_valid_example_list_is_accepted_and_every_bad_pattern_refused() -> None:
    for index, topic in enumerate(TOPICS):
        _record_type_check(index, [{}] * 3)
        for name, _, _ in lifted(topic.record_type)[1]:
            validator = ListValidator(topic.record_type)
            base = msgspec.to_builtins(EXAMPLES[topic.record_type])
            good = msgspec.json.encode(base)
            bad = msgspec.json.encode(base | {name: "1e5"})
            assert validator.decode_all([good, good]) is not None
            assert validator.decode_all([good, bad, good]) is None
