"""Alertmanager-style label matchers, part of the rule, silence and route configuration contract.

``name="value"``, ``name!="value"``, ``name=~"regex"``, ``name!~"regex"``; the value may also be written
unquoted (everything after the operator, trimmed), as Alertmanager accepts. Regexes match the whole label
value. A missing label matches as the empty string. Rule files also have a simpler ``where:`` form
(``label: value`` exact, ``label: "~regex"`` a full regex match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from typing import Literal, cast

_QUOTED = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')
_UNQUOTED = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*(.*?)\s*$")

Op = Literal["=", "!=", "=~", "!~"]


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    @classmethod
    def parse(cls, text: str) -> Matcher:
        """Parse one ``name<op>value`` matcher (value quoted or not); raises ValueError naming what is wrong."""
        if found := _QUOTED.match(text):
            value = found.group(3).replace('\\"', '"')
        elif found := _UNQUOTED.match(text):
            value = found.group(3)
        else:
            raise ValueError(f'bad matcher {text!r}: expected name="value", name!="value", name=~"re" or name!~"re"')
        op = cast(Op, found.group(2))
        if op in ("=~", "!~"):
            try:
                _compiled(value)
            except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999} overflows the compiler
                raise ValueError(f"bad regex in matcher {text!r}: {exc}") from exc
        return cls(found.group(1), op, value)

    def matches(self, labels: Mapping[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = _compiled(self.value).fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        escaped = self.value.replace('"', '\\"')
        return f'{self.name}{self.op}"{escaped}"'


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_matcher(text: str) -> Matcher:
    """:meth:`Matcher.parse`."""
    return Matcher.parse(text)


def where_matchers(where: Mapping[str, str]) -> tuple[Matcher, ...]:
    """The ``where:`` form: ``label: value`` is exact, ``label: "~regex"`` a full regex match."""
    out = []
    for name, value in where.items():
        if value.startswith("~"):
            _compiled(value[1:])
            out.append(Matcher(name, "=~", value[1:]))
        else:
            out.append(Matcher(name, "=", value))
    return tuple(out)


def all_match(matchers: Iterable[Matcher], labels: Mapping[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
