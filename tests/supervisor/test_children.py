"""A detached child is no longer the group's: neither reported dead nor stopped by the group (real processes)."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

from pipeline.supervisor.children import ChildGroup


def test_a_detached_child_is_neither_dead_nor_stopped_by_the_group(tmp_path: Path) -> None:
    group = ChildGroup(tmp_path, {})
    kept = group.start("kept", ["--help"])
    gone = group.start("gone", ["--help"])
    group.detach(gone)
    with contextlib.suppress(ProcessLookupError):  # it may have exited already
        os.killpg(gone.process.pid, signal.SIGKILL)
    gone.process.wait(30)
    kept.process.wait(30)
    assert group.children == [kept]
    assert [c.name for c in group.dead()] == ["kept"]  # exited by itself; the killed one is not reported
    assert group.stop(timeout=5) == [] and group.leftovers() == []
