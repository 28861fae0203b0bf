"""Contract validation of a whole list of topic values at once, exactly as the contract's decoder does it.

msgspec checks a ``pattern`` constraint (decimal strings, symbols) with ``re.search`` once per value
and field, which is about two thirds of decoding a trade. :func:`lifted` derives from a record type
the same struct with the ``pattern`` of every top-level string field lifted (every other constraint,
literal, type, default and option kept), and :class:`ListValidator` decodes a list with it, then runs
each lifted pattern with the same ``re`` pattern and ``search`` over the distinct values of the
decoded column (a batch's symbols, prices and sizes repeat a lot), so the values accepted are exactly
those the contract's decoder accepts. A list with any value that fails is reported as a whole
(``None``); the caller then converts it one record at a time with the contract's own decoder, which
isolates the bad records as dead letters.
"""

from __future__ import annotations

import functools
import re
import types
import typing
from collections.abc import Callable
from operator import attrgetter
from typing import Annotated, Any

import msgspec

from pipeline.contracts import Record, decoder_for

_STRING_CONSTRAINTS = ("min_length", "max_length")


def _without_pattern(annotation: Any) -> tuple[Any, str | None]:
    """``(annotation with a string pattern lifted, the pattern)`` for ``Annotated[str, Meta(pattern=...)]``
    (optionally ``| None``); anything else comes back unchanged with ``None``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and len(args) == 2:
            lifted, pattern = _without_pattern(inner[0])
            if pattern is not None:
                return lifted | None, pattern
        return annotation, None
    if origin is not Annotated:
        return annotation, None
    base, *metas = typing.get_args(annotation)
    patterns = [m.pattern for m in metas if isinstance(m, msgspec.Meta) and m.pattern is not None]
    if base is not str or len(patterns) != 1:
        return annotation, None
    kept = []
    for m in metas:
        if isinstance(m, msgspec.Meta) and m.pattern is not None:
            limits = {k: getattr(m, k) for k in _STRING_CONSTRAINTS if getattr(m, k) is not None}
            if limits:
                kept.append(msgspec.Meta(**limits))
        else:
            kept.append(m)
    return (Annotated[(str, *kept)] if kept else str), patterns[0]  # type: ignore[valid-type]


@functools.cache
def lifted(record_type: type[Record]) -> tuple[type[msgspec.Struct], tuple[tuple[str, re.Pattern[str], bool], ...]]:
    """``record_type`` with its top-level string patterns lifted, and ``(field, pattern, optional)`` to check."""
    hints = typing.get_type_hints(record_type, include_extras=True)
    fields: list[Any] = []
    checks: list[tuple[str, re.Pattern[str], bool]] = []
    for f in msgspec.structs.fields(record_type):
        annotation, pattern = _without_pattern(hints[f.name])
        if pattern is not None:
            optional = typing.get_origin(annotation) in (typing.Union, types.UnionType)
            checks.append((f.name, re.compile(pattern), optional))
        if f.default is not msgspec.NODEFAULT:
            fields.append((f.name, annotation, f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, annotation, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, annotation))
    # A subclass redeclaring every field in its order: options (frozen, unknown fields, renames) and
    # any ``__post_init__`` are inherited, field order and names stay; a tag is the parent's own.
    config = record_type.__struct_config__
    loose = msgspec.defstruct(
        f"Lifted{record_type.__name__}",
        fields,
        bases=(record_type,),
        kw_only=True,
        tag=config.tag,
        tag_field=config.tag_field,
    )
    return loose, tuple(checks)


class ListValidator:
    """Decodes a list of one topic's values into records, accepting exactly what the contract accepts."""

    def __init__(self, record_type: type[Record]):
        loose, self.checks = lifted(record_type)
        self._decode: Callable[[bytes], Any] = msgspec.json.Decoder(loose).decode
        self.strict = decoder_for(record_type)

    def decode_all(self, values: list[bytes]) -> list[Any] | None:
        """The records of ``values``, or ``None`` when any value fails the contract."""
        decode = self._decode
        try:
            records = [decode(v) for v in values]
        except msgspec.DecodeError:  # ValidationError included
            return None
        for name, pattern, optional in self.checks:
            distinct = set(map(attrgetter(name), records))  # prices, sizes and symbols repeat a lot
            if optional:
                distinct.discard(None)
            if not all(map(pattern.search, distinct)):
                return None
        return records
