"""Alertmanager-style label matchers (``name="v"``, ``name!="v"``, ``name=~"re"``, ``name!~"re"``) and the
simpler ``where:`` form of rule files (``value`` exact, ``~regex`` full match)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from typing import Literal

_MATCHER = re.compile(r'^\s*([A-Za-z_][A-Za-z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"\s*$')

Op = Literal["=", "!=", "=~", "!~"]


@dataclass(frozen=True)
class Matcher:
    name: str
    op: Op
    value: str

    def matches(self, labels: dict[str, str]) -> bool:
        actual = labels.get(self.name, "")
        if self.op == "=":
            return actual == self.value
        if self.op == "!=":
            return actual != self.value
        found = _compiled(self.value).fullmatch(actual) is not None
        return found if self.op == "=~" else not found

    def __str__(self) -> str:
        return f'{self.name}{self.op}"{self.value}"'


@cache
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def parse_matcher(text: str) -> Matcher:
    """Parse one ``name<op>"value"`` matcher; raises ValueError naming what is wrong."""
    found = _MATCHER.match(text)
    if found is None:
        raise ValueError(f'bad matcher {text!r}: expected name="value", name!="value", name=~"re" or name!~"re"')
    name, op, value = found.group(1), found.group(2), found.group(3).replace('\\"', '"')
    if op in ("=~", "!~"):
        try:
            _compiled(value)
        except re.error as exc:
            raise ValueError(f"bad regex in matcher {text!r}: {exc}") from exc
    return Matcher(name, op, value)  # type: ignore[arg-type]


def where_matchers(where: dict[str, str]) -> tuple[Matcher, ...]:
    """The ``where:`` form: ``label: value`` is exact, ``label: "~regex"`` a full regex match."""
    out = []
    for name, value in where.items():
        if value.startswith("~"):
            _compiled(value[1:])
            out.append(Matcher(name, "=~", value[1:]))
        else:
            out.append(Matcher(name, "=", value))
    return tuple(out)


def all_match(matchers: tuple[Matcher, ...] | list[Matcher], labels: dict[str, str]) -> bool:
    return all(m.matches(labels) for m in matchers)
