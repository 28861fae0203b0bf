"""JSON-lines logs (MARKETPRISM_LOG_FORMAT=json|auto): the formatter's fields, the format choice, and real components
(an aiokafka one and a Faust worker, whose framework replaces the root handlers) writing nothing but JSON lines."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from opentelemetry.sdk.trace import TracerProvider
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.observability.logs import JsonFormatter, chosen_format, configure_logging, faust_worker_options
from pipeline.settings import Settings
from tests.observability.test_health import Component


def _record(message: str, *args: object, exc: bool = False, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("pipeline.sinks.runner", logging.WARNING, __file__, 1, message, args, None)
    if exc:
        try:
            raise ValueError("bad batch")
        except ValueError:
            import sys

            record.exc_info = sys.exc_info()
    record.__dict__.update(extra)
    return record


def test_a_line_has_the_fields() -> None:
    line = JsonFormatter("sink").format(
        _record('wrote %d rows to "%s"', 3, "trades", topic="md.trades.v1", key=b"okx:BTC-USDT")
    )
    doc = json.loads(line)
    assert "\n" not in line
    assert set(doc) == {"ts", "level", "component", "logger", "message", "topic", "key"}
    assert doc["message"] == 'wrote 3 rows to "trades"'
    assert (doc["level"], doc["component"], doc["logger"]) == ("WARNING", "sink", "pipeline.sinks.runner")
    assert (doc["topic"], doc["key"]) == ("md.trades.v1", "okx:BTC-USDT")
    assert doc["ts"].endswith("+00:00") and "." in doc["ts"]


def test_trace_and_exception() -> None:
    tracer = TracerProvider().get_tracer("test")
    with tracer.start_as_current_span("bar") as span:
        doc = json.loads(JsonFormatter("worker").format(_record("boom", exc=True)))
    assert doc["trace_id"] == f"{span.get_span_context().trace_id:032x}"
    assert doc["span_id"] == f"{span.get_span_context().span_id:016x}"
    assert "ValueError: bad batch" in doc["exception"]
    assert "trace_id" not in json.loads(JsonFormatter("worker").format(_record("no span")))


class _Stream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self._tty = tty

    def isatty(self) -> bool:
        return self._tty


@pytest.fixture
def _restore_logging() -> Iterator[None]:
    yield
    configure_logging("INFO", fmt="text")


@pytest.mark.usefixtures("_restore_logging")
def test_format_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MARKETPRISM_LOG_FORMAT", raising=False)
    assert chosen_format(stream=_Stream(tty=False)) == "text"  # the default stays the terminal one
    assert chosen_format("auto", _Stream(tty=False)) == "json"
    assert chosen_format("auto", _Stream(tty=True)) == "text"
    monkeypatch.setenv("MARKETPRISM_LOG_FORMAT", "JSON")
    assert chosen_format(stream=_Stream(tty=True)) == "json"
    with pytest.raises(ValueError, match="expected text, json or auto"):
        chosen_format("yaml")
    stream = _Stream(tty=False)
    configure_logging("INFO", component="notify", fmt="json", stream=stream)
    logging.getLogger("pipeline.notify").info("sent", extra={"topic": "ops.notifications.v1"})
    assert json.loads(stream.getvalue())["component"] == "notify"
    assert faust_worker_options()["logging_config"]["formatters"]["json"]["component"] == "notify"
    configure_logging("INFO", fmt="text")
    assert faust_worker_options() == {}


def test_an_unknown_format_is_refused_at_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MARKETPRISM_LOG_FORMAT", "xml")
    result = CliRunner().invoke(app, ["topics", "list", "--json"])
    assert result.exit_code == 2 and "expected text, json or auto" in result.output


def _json_lines(path: Path) -> list[dict[str, object]]:
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    assert lines
    docs = []
    for line in lines:
        try:
            docs.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"not a JSON line in {path.name}: {line!r}") from None
    return docs


@pytest.mark.parametrize("argv", [("sink", "--topic", "md.trades.v1", "--group", "logs-sink"), ("worker",)])
async def test_components_write_json_lines(topics: Settings, tmp_path: Path, argv: tuple[str, ...]) -> None:
    component = Component(topics, tmp_path, *argv, env={"MARKETPRISM_LOG_FORMAT": "json"})
    try:
        await component.wait_ready()
    finally:
        component.stop()
    docs = _json_lines(component.log_path)
    assert {d["component"] for d in docs} == {argv[0]}
    assert all({"ts", "level", "logger", "message"} <= set(d) for d in docs)
    assert any("metrics on http://" in str(d["message"]) for d in docs)
