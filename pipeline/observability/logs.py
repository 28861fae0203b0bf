"""Logging configuration, applied once by the entry point: Rich's handler for a terminal, JSON lines for collectors.

``MARKETPRISM_LOG_FORMAT`` chooses: ``text`` (Rich, the default), ``json`` (one JSON object a line on stderr, for
Loki or ELK to ingest as they are) or ``auto`` (JSON when stderr is not a terminal). A JSON line carries ``ts``
(UTC, ISO 8601 with microseconds), ``level``, ``component`` (the sub-command), ``logger``, ``message``, the
OpenTelemetry ``trace_id``/``span_id`` when a span is current, and ``topic``/``partition``/``offset``/``key`` when the
call passes them (``log.warning("...", extra={"topic": t, "key": k})``); ``exception`` holds a traceback.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
from typing import Any, Literal, TextIO

from rich.logging import RichHandler

Format = Literal["text", "json", "auto"]
FORMAT_ENV = "MARKETPRISM_LOG_FORMAT"
RECORD_FIELDS = ("topic", "partition", "offset", "key")


def _trace_ids() -> tuple[str, str] | None:
    """The current OpenTelemetry span's trace and span ids (hex), if a valid span is current."""
    try:
        from opentelemetry import trace
    except ImportError:  # pragma: no cover - opentelemetry-api is a dependency
        return None
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None
    return f"{context.trace_id:032x}", f"{context.span_id:016x}"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per record (see the module docstring for the fields)."""

    def __init__(self, component: str):
        super().__init__()
        self.component = component

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="microseconds"),
            "level": record.levelname,
            "component": self.component,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = _trace_ids()
        if ids is not None:
            doc["trace_id"], doc["span_id"] = ids
        for name in RECORD_FIELDS:
            if name in record.__dict__:
                doc[name] = _plain(record.__dict__[name])
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def chosen_format(fmt: str | None = None, stream: TextIO | None = None) -> Literal["text", "json"]:
    """``fmt`` (else ``MARKETPRISM_LOG_FORMAT``, else text) resolved against ``stream`` (stderr) for ``auto``."""
    value = (fmt or os.environ.get(FORMAT_ENV) or "text").lower()
    if value not in ("text", "json", "auto"):
        raise ValueError(f"{FORMAT_ENV}: expected text, json or auto, got {value!r}")
    if value == "auto":
        target = stream or sys.stderr
        return "text" if target.isatty() else "json"
    return value  # type: ignore[return-value]


class _Configured:
    component = "marketprism"
    fmt: Literal["text", "json"] = "text"
    level = "INFO"


def configure_logging(
    level: str = "INFO", component: str = "marketprism", fmt: str | None = None, stream: TextIO | None = None
) -> None:
    """Configure the root logger (``ValueError`` for an unknown format)."""
    handler: logging.Handler
    _Configured.component, _Configured.fmt, _Configured.level = component, chosen_format(fmt, stream), level
    if _Configured.fmt == "json":
        handler = logging.StreamHandler(stream or sys.stderr)
        handler.setFormatter(JsonFormatter(component))
        logging.basicConfig(level=level, handlers=[handler], force=True)
    else:
        logging.basicConfig(
            level=level,
            format="%(name)s: %(message)s",
            datefmt="[%X]",
            handlers=[RichHandler(rich_tracebacks=True, show_path=False)],
            force=True,
        )
    for noisy in ("aiokafka", "faust", "mode"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def faust_worker_options() -> dict[str, Any]:
    """Options for ``faust.Worker``: Faust (mode) replaces the root handlers with its own colour logger at start, so
    in JSON mode it gets this configuration instead."""
    if _Configured.fmt != "json":
        return {}
    return {
        "logging_config": {
            "version": 1,
            "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter, "component": _Configured.component}},
            "handlers": {"default": {"class": "logging.StreamHandler", "formatter": "json", "stream": sys.stderr}},
            "root": {"level": _Configured.level, "handlers": ["default"]},
        }
    }
