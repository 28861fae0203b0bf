"""Child processes of `run` and the demo: started in their own process groups, stopped by PID, none left behind."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    argv: tuple[str, ...]
    log_path: Path
    process: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.process.poll() is None


@dataclass
class ChildGroup:
    """Starts ``marketprism <command>`` children and stops every one of them (and their descendants)."""

    log_dir: Path
    env: Mapping[str, str]
    children: list[Child] = field(default_factory=list)

    def start(self, name: str, args: Sequence[str], env: Mapping[str, str] | None = None) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        argv = (sys.executable, "-m", "pipeline", *args)
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("ab") as out:
            process = subprocess.Popen(  # noqa: S603 - fixed argv built by this module, no shell
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.env, **(env or {})},
                start_new_session=True,
            )
        child = Child(name, argv, log_path, process)
        self.children.append(child)
        log.info("started %s (pid %s): %s", name, process.pid, " ".join(args))
        return child

    def detach(self, child: Child) -> None:
        """Stop watching and owning ``child`` (before stopping it on purpose: it is then neither "dead" nor
        stopped by :meth:`stop`); the caller stops and waits for it."""
        self.children.remove(child)

    def dead(self) -> list[Child]:
        return [c for c in self.children if not c.alive]

    def stop(self, timeout: float = 20.0) -> list[str]:
        """SIGTERM every child's process group, then SIGKILL what is left; returns names that needed KILL."""
        descendants: list[psutil.Process] = []
        for child in self.children:
            with contextlib.suppress(psutil.NoSuchProcess):
                descendants += psutil.Process(child.process.pid).children(recursive=True)
            if child.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGTERM)
        killed = []
        deadline = time.monotonic() + timeout
        for child in reversed(self.children):
            remaining = max(0.1, deadline - time.monotonic())
            try:
                child.process.wait(remaining)
            except subprocess.TimeoutExpired:
                killed.append(child.name)
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.process.pid, signal.SIGKILL)
                child.process.wait(5)
        for proc in descendants:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        return killed

    def leftovers(self) -> list[int]:
        """PIDs of our children still running (should be empty after :meth:`stop`)."""
        return [c.process.pid for c in self.children if c.alive]
