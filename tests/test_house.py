"""The house rules of the layout (docs/architecture.md), read from the source with ``ast``:

- no runtime package imports the tooling wing (``pipeline/bench``) or the local infrastructure
  (``pipeline/infra``); only those two, the entry point (``pipeline/cli.py``, which registers the tools'
  commands and ``infra up|down``) and the demo (``pipeline/demo``: it starts a local broker, it is never
  deployed) may;
- no topic name is spelled outside ``pipeline/contracts`` (and ``topics/``, tests): every producer and consumer
  takes its topic from the contracts' topic objects (``pipeline.contracts.topics``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from pipeline.contracts.topics import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipeline"

TOOLING = ("pipeline/bench", "pipeline/infra")
MAY_IMPORT_TOOLING = (*TOOLING, "pipeline/cli.py", "pipeline/demo")
TOPIC_OWNERS = ("pipeline/contracts",)


def _modules() -> Iterator[tuple[str, ast.Module]]:
    for path in sorted(PIPELINE.rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        yield rel, ast.parse(path.read_text(encoding="utf-8"), rel)


def _under(rel: str, prefixes: tuple[str, ...]) -> bool:
    return any(rel == p or rel.startswith(p.rstrip("/") + "/") for p in prefixes)


def _imported(tree: ast.Module) -> Iterator[tuple[int, str]]:
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:  # ``from pipeline import bench``
                yield node.lineno, f"{node.module}.{alias.name}"


def _is_tooling(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in ("pipeline.bench", "pipeline.infra"))


def test_no_runtime_package_imports_the_tooling_wing_or_infra() -> None:
    found = [
        f"{rel}:{line}: imports {module}"
        for rel, tree in _modules()
        if not _under(rel, MAY_IMPORT_TOOLING)
        for line, module in _imported(tree)
        if _is_tooling(module)
    ]
    assert not found, "runtime code must not import pipeline/bench or pipeline/infra:\n" + "\n".join(found)


def test_no_topic_name_literal_outside_the_contracts() -> None:
    names = {t.name for t in REGISTRY} | {t.name for t in REGISTRY.internal}
    found = [
        f"{rel}:{node.lineno}: {node.value!r}"
        for rel, tree in _modules()
        if not _under(rel, TOPIC_OWNERS)
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
    ]
    assert not found, "take topics from pipeline.contracts.topics (TRADES.name, topic_for(...)):\n" + "\n".join(found)


def test_the_checks_see_what_they_forbid() -> None:
    """The two walkers find an import of the wing and a spelled topic name (a guard against a check that
    silently inspects nothing)."""
    tree = ast.parse("from pipeline.infra import free_port\nimport pipeline.bench.chaos\nTOPIC = 'md.trades.v1'\n")
    assert [m for _, m in _imported(tree) if _is_tooling(m)] == [
        "pipeline.infra",
        "pipeline.infra.free_port",
        "pipeline.bench.chaos",
    ]
    assert any(isinstance(n, ast.Constant) and n.value == "md.trades.v1" for n in ast.walk(tree))
    assert sum(1 for _ in _modules()) > 100
    assert _under("pipeline/api/app.py", ("pipeline/api",)) and not _under("pipeline/apix.py", ("pipeline/api",))


def test_each_package_has_a_root_error_its_errors_derive_from() -> None:
    from pipeline.aggregation.errors import AggregationError, PartitioningError
    from pipeline.collectors.base import CollectorError, FrameError, SubscriptionError
    from pipeline.kafka.admin import TopicApplyError
    from pipeline.kafka.errors import KafkaPlumbingError
    from pipeline.kafka.sealed import SealError
    from pipeline.notify.base import ChannelError, ConfigError, NotifyError
    from pipeline.sinks.base import ConversionError, RejectedError, SinkBackpressureError, SinkError, UnavailableError

    for root, errors in (
        (AggregationError, (PartitioningError,)),
        (KafkaPlumbingError, (TopicApplyError, SealError)),
        (CollectorError, (FrameError, SubscriptionError)),
        (NotifyError, (ConfigError, ChannelError)),
        (SinkError, (SinkBackpressureError, UnavailableError, ConversionError, RejectedError)),
    ):
        for error in errors:
            assert issubclass(error, root), (error, root)
    # the roots were added beside the built-in bases callers already catch
    assert issubclass(PartitioningError, ValueError) and issubclass(SealError, ValueError)
    assert issubclass(TopicApplyError, RuntimeError)
