"""Label and annotation templates: ``str.format`` fields over the alert's labels and ``value``.

``{exchange} lag {value:.0f} ms`` renders with the series labels; a label the series lacks renders
as ``<missing>`` and a missing value as ``n/a`` (checked at load: a template may only name the rule's
``by`` labels, its static labels, ``value``, ``rule`` and ``severity``).
"""

from __future__ import annotations

import string
from typing import Any

_formatter = string.Formatter()


class _Value:
    """A value that formats like a float and as ``n/a`` when absent."""

    def __init__(self, value: float | None):
        self.value = value

    def __format__(self, spec: str) -> str:
        return "n/a" if self.value is None else format(self.value, spec or "g")


class _Labels(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "<missing>"


def fields(template: str) -> set[str]:
    """The field names a template uses; raises ValueError on a malformed template."""
    names = set()
    for _literal, field, _spec, _conv in _formatter.parse(template):
        if field is None:
            continue
        if not field.isidentifier():
            raise ValueError(f"template field {{{field}}} must be a plain name")
        names.add(field)
    return names


def render(template: str, labels: dict[str, str], value: float | None) -> str:
    context = _Labels(labels)
    context["value"] = _Value(value)
    try:
        return template.format_map(context)
    except (ValueError, TypeError) as exc:  # a bad format spec for this value: keep the raw template
        return f"{template} (template error: {exc})"
