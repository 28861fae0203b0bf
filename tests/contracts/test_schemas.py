"""Records and JSON Schemas agree: schema-valid instances decode, encoded records validate."""

from __future__ import annotations

import json

import jsonschema
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.contracts import DecodeError, decode, encode, load_registry
from pipeline.contracts.examples import EXAMPLES
from pipeline.contracts.records import RECORD_TYPES
from pipeline.contracts.topics import json_schema

REGISTRY = load_registry()
TOPICS = [pytest.param(t, id=t.name) for t in REGISTRY]


def _validator(topic):  # type: ignore[no-untyped-def]
    schema = json.loads(topic.schema_path.read_text())
    return jsonschema.Draft202012Validator(schema)


def test_every_record_type_has_a_topic_and_an_example() -> None:
    used = {t.record_type for t in REGISTRY}
    assert used == set(RECORD_TYPES.values())
    assert set(EXAMPLES) == set(RECORD_TYPES.values())


@pytest.mark.parametrize("topic", TOPICS)
def test_committed_schema_is_generated_from_the_record(topic) -> None:  # type: ignore[no-untyped-def]
    committed = json.loads(topic.schema_path.read_text())
    assert committed == json.loads(json.dumps(json_schema(topic)))


@pytest.mark.parametrize("topic", TOPICS)
def test_example_encodes_to_a_schema_valid_value(topic) -> None:  # type: ignore[no-untyped-def]
    value = json.loads(encode(EXAMPLES[topic.record_type]))
    _validator(topic).validate(value)
    assert decode(topic.record_type, json.dumps(value)) == EXAMPLES[topic.record_type]


def _values(info: msgspec.inspect.Type) -> st.SearchStrategy[object]:
    """JSON values admitted by a msgspec type, drawn from its constraints (not from the schema)."""
    mi = msgspec.inspect
    if isinstance(info, mi.Metadata):
        return _values(info.type)
    if isinstance(info, mi.StrType):
        return st.from_regex(info.pattern, fullmatch=True) if info.pattern else st.text(max_size=20)
    if isinstance(info, mi.IntType):
        low = info.ge if info.ge is not None else (info.gt + 1 if info.gt is not None else -(2**62))
        return st.integers(min_value=low, max_value=2**62)
    if isinstance(info, mi.FloatType):
        return st.floats(min_value=info.ge, max_value=info.le, allow_nan=False, allow_infinity=False)
    if isinstance(info, mi.BoolType):
        return st.booleans()
    if isinstance(info, mi.NoneType):
        return st.none()
    if isinstance(info, mi.LiteralType):
        return st.sampled_from(info.values)
    if isinstance(info, mi.UnionType):
        return st.one_of([_values(t) for t in info.types])
    if isinstance(info, mi.ListType):
        return st.lists(_values(info.item_type), min_size=info.min_length or 0, max_size=4)
    if isinstance(info, mi.StructType):  # a nested record (TradeBatch.trades)
        return _instances(info.cls)
    if isinstance(info, mi.TupleType):
        return st.tuples(*[_values(t) for t in info.item_types]).map(list)
    if isinstance(info, mi.DictType):
        return st.dictionaries(_values(info.key_type), _values(info.value_type), max_size=3)
    raise AssertionError(f"no strategy for {info}")


def _instances(record_type: type) -> st.SearchStrategy[dict[str, object]]:
    info = msgspec.inspect.type_info(record_type)
    required = {f.encode_name: _values(f.type) for f in info.fields if f.required}
    optional = {f.encode_name: _values(f.type) for f in info.fields if not f.required}
    return st.fixed_dictionaries(required, optional=optional)


@pytest.mark.parametrize("topic", TOPICS)
@settings(max_examples=80, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(data=st.data())
def test_valid_instances_agree_in_both_directions(topic, data) -> None:  # type: ignore[no-untyped-def]
    """A generated instance is schema-valid, decodes into the record, and re-encodes schema-valid."""
    instance = data.draw(_instances(topic.record_type))
    validator = _validator(topic)
    validator.validate(instance)
    record = decode(topic.record_type, json.dumps(instance))
    reencoded = json.loads(encode(record))
    validator.validate(reencoded)
    assert decode(topic.record_type, json.dumps(reencoded)) == record


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("price", 36512.01),
        ("price", "1e-8"),
        ("price", "12,5"),
        ("side", "BUY"),
        ("ts_event", -1),
        ("symbol", "btcusdt"),
        ("exchange", "Binance"),
    ],
)
def test_violations_are_rejected_by_both(field: str, bad: object) -> None:
    from pipeline.contracts import Trade

    value = msgspec.to_builtins(EXAMPLES[Trade]) | {field: bad}
    with pytest.raises(DecodeError):
        decode(Trade, json.dumps(value))
    with pytest.raises(jsonschema.ValidationError):
        _validator(REGISTRY.get("md.trades.v1")).validate(value)


def test_prices_stay_exact_strings() -> None:
    from pipeline.contracts import Trade

    record = decode(Trade, json.dumps(msgspec.to_builtins(EXAMPLES[Trade]) | {"price": "0.00000001000"}))
    assert record.price == "0.00000001000"
    assert b'"price":"0.00000001000"' in encode(record)
