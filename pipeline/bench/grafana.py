"""The provisioned Grafana dashboards' SQL, expanded as Grafana and the ClickHouse data source plugin
(grafana-clickhouse-datasource) expand it, so every panel query can be run and checked anywhere.

Expansion order follows Grafana: template variables first (``$var``, ``${var}``, ``${var:singlequote}``,
``${var:csv}``; a variable's value is every value its own query returns, i.e. "All"), then the
plugin's macros (``pkg/macros/macros.go``):

- ``$__fromTime`` / ``$__toTime`` -> ``toDateTime(<unix s>)``; ``_ms`` -> ``fromUnixTimestamp64Milli(<ms>)``
- ``$__timeFilter(c)`` -> ``c >= toDateTime(from) AND c <= toDateTime(to)`` (``_ms`` with milliseconds)
- ``$__dateFilter(c)`` -> ``c >= toDate('from') AND c <= toDate('to')``
- ``$__dateTimeFilter(d, t)`` / ``$__dt(d, t)`` -> ``(date filter on d) AND (time filter on t)``
- ``$__timeInterval(c)`` -> ``toStartOfInterval(toDateTime(c), INTERVAL <s> second)`` (at least 1 s)
- ``$__timeInterval_ms(c)`` -> ``toStartOfInterval(toDateTime64(c, 3), INTERVAL <ms> millisecond)``
- ``$__interval_s`` -> the interval in whole seconds (at least 1)
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.contracts.topics import PROJECT_ROOT

DASHBOARDS_DIR = PROJECT_ROOT / "infra" / "grafana" / "dashboards"
_MACRO = re.compile(r"\$__(\w+)")
_VARIABLE = re.compile(r"\$\{(\w+)(?::(\w+))?\}|\$(?!__)(\w+)")


class MacroError(ValueError):
    """A macro is unknown or has the wrong number of arguments."""


@dataclass(frozen=True)
class TimeRange:
    start: dt.datetime
    end: dt.datetime
    interval: dt.timedelta

    @classmethod
    def for_points(cls, start: dt.datetime, end: dt.datetime, max_points: int = 1000) -> TimeRange:
        """Grafana's interval: the range divided by the panel's maximum number of points."""
        return cls(start, end, (end - start) / max_points)


def _unix(t: dt.datetime) -> int:
    return int(t.timestamp())


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def _date(t: dt.datetime) -> str:
    return f"toDate('{t.astimezone(dt.UTC):%Y-%m-%d}')"


def _macros(r: TimeRange) -> dict[str, tuple[int, Callable[[list[str]], str]]]:
    f, t = f"toDateTime({_unix(r.start)})", f"toDateTime({_unix(r.end)})"
    fm, tm = f"fromUnixTimestamp64Milli({_ms(r.start)})", f"fromUnixTimestamp64Milli({_ms(r.end)})"
    seconds = max(int(r.interval.total_seconds()), 1)
    millis = max(int(r.interval.total_seconds() * 1000), 1)

    def date_time(a: list[str]) -> str:
        return f"({a[0]} >= {_date(r.start)} AND {a[0]} <= {_date(r.end)}) AND ({a[1]} >= {f} AND {a[1]} <= {t})"

    return {
        "fromTime": (0, lambda a: f),
        "toTime": (0, lambda a: t),
        "fromTime_ms": (0, lambda a: fm),
        "toTime_ms": (0, lambda a: tm),
        "timeFilter": (1, lambda a: f"{a[0]} >= {f} AND {a[0]} <= {t}"),
        "timeFilter_ms": (1, lambda a: f"{a[0]} >= {fm} AND {a[0]} <= {tm}"),
        "dateFilter": (1, lambda a: f"{a[0]} >= {_date(r.start)} AND {a[0]} <= {_date(r.end)}"),
        "dateTimeFilter": (2, date_time),
        "dt": (2, date_time),
        "timeInterval": (1, lambda a: f"toStartOfInterval(toDateTime({a[0]}), INTERVAL {seconds} second)"),
        "timeInterval_ms": (1, lambda a: f"toStartOfInterval(toDateTime64({a[0]}, 3), INTERVAL {millis} millisecond)"),
        "interval_s": (0, lambda a: str(seconds)),
    }


def _arguments(sql: str, start: int) -> tuple[list[str], int]:
    """Comma-separated arguments of the parenthesis opening at ``start``; returns them and the end."""
    depth, args, current = 0, [], ""
    for i in range(start, len(sql)):
        ch = sql[i]
        if ch == "(":
            depth += 1
            if depth == 1:
                continue
        elif ch == ")":
            depth -= 1
            if depth == 0:
                args.append(current.strip())
                return [a for a in args if a], i + 1
        elif ch == "," and depth == 1:
            args.append(current.strip())
            current = ""
            continue
        current += ch
    raise MacroError(f"unbalanced parentheses after position {start}")


def expand_macros(sql: str, time_range: TimeRange) -> str:
    macros = _macros(time_range)
    out, pos = [], 0
    for match in _MACRO.finditer(sql):
        if match.start() < pos:
            continue
        name = match.group(1)
        if name not in macros:
            raise MacroError(f"unknown macro $__{name}")
        arity, render = macros[name]
        out.append(sql[pos : match.start()])
        end = match.end()
        args: list[str] = []
        if arity:
            if end >= len(sql) or sql[end] != "(":
                raise MacroError(f"$__{name} needs {arity} argument(s)")
            args, end = _arguments(sql, end)
            if len(args) != arity:
                raise MacroError(f"$__{name}: expected {arity} argument(s), got {len(args)}")
        out.append(render(args))
        pos = end
    out.append(sql[pos:])
    return "".join(out)


def expand_variables(sql: str, values: dict[str, list[str]]) -> str:
    def render(match: re.Match[str]) -> str:
        name = match.group(1) or match.group(3)
        fmt = match.group(2)
        if name not in values:
            return match.group(0)
        items = values[name]
        if fmt == "singlequote":
            return ",".join("'" + v.replace("'", "\\'") + "'" for v in items)
        if fmt == "doublequote":
            return ",".join('"' + v + '"' for v in items)
        return ",".join(items)

    return _VARIABLE.sub(render, sql)


def expand(sql: str, time_range: TimeRange, values: dict[str, list[str]] | None = None) -> str:
    """A panel's SQL as the data source would send it for ``time_range`` and variable ``values``."""
    return expand_macros(expand_variables(sql, values or {}), time_range)


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref_id: str
    sql: str


def load_dashboards(directory: Path = DASHBOARDS_DIR) -> dict[str, dict[str, Any]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))}


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def panel_queries(dashboard: dict[str, Any]) -> Iterator[PanelQuery]:
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if sql := target.get("rawSql"):
                yield PanelQuery(dashboard["title"], panel.get("title", ""), target.get("refId", "A"), sql)


def variable_queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """``(name, sql)`` of each query variable, in dashboard order (later ones may use earlier ones)."""
    found: list[tuple[str, str]] = []
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") == "query":
            query = var.get("query")
            sql = query.get("rawSql") if isinstance(query, dict) else query
            found.append((str(var["name"]), str(sql)))
    return found
