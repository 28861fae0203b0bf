"""``marketprism bench chaos``: seeded fault rounds against the real pipeline, each checked against an
independent computation.

One round: a fresh topic prefix on the broker; a real capture served by the replay server
(``pipeline.replay.server``, paced at ``speed``) flows through an in-process collector (the real venue
module, runtime and producer) into the broker, and ``marketprism worker`` processes aggregate it. While
the capture plays, a schedule drawn from the round's seed acts on the worker at chosen fractions of the
capture's frames:

- ``kill``: SIGKILL, then a new worker in the same group at once;
- ``stop``: SIGSTOP for a drawn time, then SIGCONT;
- ``term``: SIGTERM (a clean stop), then a new worker;
- ``drop`` (with ``drops``: the harness's own broker behind a TCP relay, :class:`Relay`): every
  connection to the broker (collector, worker, its state writes) cut at once, new ones refused for a
  drawn time.

Mode ``kill`` is the issue-16 scenario: one SIGKILL once 1/4, 1/3 or 1/2 of the frames are in, and an
immediate restart. After the capture ends and the collector has flushed, the round reads
``md.trade_batches.v1`` back from the broker, computes every 1s and 1m bar independently
(:mod:`pipeline.bench.reference`) and waits (bounded) for the worker's bars. The round is clean when the
bars on ``md.bars.*`` are exactly the expected ones (same keys, same exact decimals; a bar emitted again
must be identical), the last worker is alive and logged no crash, and every dead letter on
``ops.dlq.v1`` has a reason and an error. A failing round prints its seed; ``--seed S --rounds 1``
replays the same schedule (the moments are fractions of the capture, so the replay is of the same
schedule, not of the same thread interleaving).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiokafka import TopicPartition

from pipeline.bench.reference import accepted, bar_fields, bar_key, expected_bars, trades_of
from pipeline.contracts import Bar, DeadLetter, TradeBatch, decode
from pipeline.contracts.topics import BARS_1M, BARS_1S, BBO, DLQ, TRADE_BATCHES
from pipeline.kafka.clients import make_consumer
from pipeline.kafka.offsets import log_end_offsets
from pipeline.settings import Settings

log = logging.getLogger(__name__)

LATENESS_MS = GRACE_MS = 500
# The idle timeout sits above the longest pause of production the harness itself causes: a drop cuts the
# collector off for up to 4 s (then it reconnects and flushes), and on a loaded machine the replay's pacing (the
# server, the collector and the relay share this process's loop) stalls for seconds. A worker that has read
# everything and hears nothing for the idle timeout closes its open windows (docs/aggregation.md), and trades of
# those windows that come after the pause are late by its rules while the independent computation knows no wall
# clock: with 3 s a loaded round (seed 9) lost a market's next four 1 s bars that way. A real deployment sets it
# above its feeds' longest normal pause in the same way.
IDLE_TIMEOUT_MS = 10_000
WORKER_ARGS = ("--lateness-ms", str(LATENESS_MS), "--grace-ms", str(GRACE_MS), "--idle-timeout-ms",
               str(IDLE_TIMEOUT_MS))  # fmt: skip
# the captures the scenario and the chaos rounds replay, with the markets their venue module subscribes
CAPTURES: dict[str, tuple[str, str, list[str]]] = {
    "binance_futures": (
        "binance_futures.txt",
        "binance_usdm",
        ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"],
    ),
    "binance": ("binance.txt", "binance", ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
}
CRASH_PATTERNS = ("We experienced a crash", "Traceback (most recent call last)")
KILL_FRACTIONS = (1 / 4, 1 / 3, 1 / 2)


@dataclass(frozen=True)
class Action:
    at: float  # fraction of the capture's frames sent
    kind: str  # kill | stop | term
    pause_s: float = 0.0  # stop: how long the worker stays stopped

    def __str__(self) -> str:
        pause = f" {self.pause_s:.1f}s" if self.kind in ("stop", "drop") else ""
        return f"{self.kind}{pause}@{self.at:.2f}"


def schedule(seed: int, mode: str, drops: bool = False) -> list[Action]:
    """The round's actions, drawn from its seed alone (and whether broker connections can be dropped)."""
    rng = random.Random(seed)  # noqa: S311 - a reproducible schedule, not a secret
    if mode == "kill":  # each fraction in turn (30 rounds: 10 each)
        return [Action(KILL_FRACTIONS[seed % len(KILL_FRACTIONS)], "kill")]
    if mode == "calm":  # the control: no fault
        return []
    kinds = ("kill", "kill", "stop", "term", "drop", "drop") if drops else ("kill", "kill", "stop", "term")
    actions = [
        Action(round(rng.uniform(0.05, 0.95), 3), rng.choice(kinds), rng.uniform(0.2, 4.0))
        for _ in range(rng.randint(1, 3))
    ]
    return sorted(actions, key=lambda a: a.at)


class Relay:
    """A TCP relay in front of the broker (which advertises the relay's address, so every client, after the
    bootstrap too, connects through it); :meth:`drop` cuts every connection and refuses new ones a while."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = 0
        self.drops = 0
        self._server: asyncio.Server | None = None
        self._refusing = False
        self._open: set[asyncio.StreamWriter] = set()

    async def start(self, port: int) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", port)
        self.port = port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._cut()
            await self._server.wait_closed()

    @property
    def refusing(self) -> bool:
        """Whether a drop is under way (connections cut, new ones refused)."""
        return self._refusing

    def _cut(self) -> None:
        for writer in list(self._open):
            writer.transport.abort()
        self._open.clear()

    async def drop(self, pause_s: float) -> None:
        self.drops += 1
        self._refusing = True
        self._cut()
        try:
            await asyncio.sleep(pause_s)
        finally:
            self._refusing = False

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._refusing:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._open.update((writer, up_writer))
        await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
        self._open.difference_update((writer, up_writer))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ConnectionError):
            pass
        finally:
            writer.transport.abort()


@contextlib.asynccontextmanager
async def relayed_broker(base: Settings) -> AsyncIterator[tuple[Settings, Relay]]:
    """A scratch Tansu broker advertised at a :class:`Relay`'s address: yields (settings through the relay,
    the relay); the broker and its directory are gone after the block."""
    from pipeline.infra.services import ManagedProcess, broker_binary, free_port

    with tempfile.TemporaryDirectory(prefix="mp-chaos-broker-") as tmp:
        port, relay_port = free_port(), free_port()
        relay = Relay("127.0.0.1", port)
        listen, advertised = f"tcp://127.0.0.1:{port}", f"tcp://127.0.0.1:{relay_port}"
        argv = (broker_binary(), "broker", "--listener-url", listen, "--advertised-listener-url", advertised,
                "--storage-engine", "memory://tansu/")  # fmt: skip
        broker = ManagedProcess("broker", argv, Path(tmp), "127.0.0.1", port)
        broker.start()
        try:
            await relay.start(relay_port)
            local = base.model_copy(
                update={"kafka": base.kafka.model_copy(update={"bootstrap_servers": f"127.0.0.1:{relay_port}"}),
                        "state_dir": Path(tmp) / "state"}
            )  # fmt: skip
            yield local, relay
        finally:
            await relay.stop()
            broker.stop()


@dataclass
class RoundResult:
    seed: int
    actions: list[Action]
    expected: int = 0
    distinct: int = 0
    missing: list[tuple[str, str, str, int]] = field(default_factory=list)
    differing: list[tuple[str, str, str, int]] = field(default_factory=list)
    unexpected: list[tuple[str, str, str, int]] = field(default_factory=list)
    reemitted_differ: list[str] = field(default_factory=list)
    dead_letters: int = 0
    dead_letters_without_reason: int = 0
    reasons: dict[str, int] = field(default_factory=dict)  # dead letters per reason
    crashed: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    diagnosis: list[str] = field(default_factory=list)  # per partition: input ends against the last saved state

    @property
    def clean(self) -> bool:
        return not (
            self.missing
            or self.differing
            or self.unexpected
            or self.reemitted_differ
            or self.dead_letters_without_reason
            or self.crashed
            or self.error
        )

    def line(self) -> str:
        plan = ", ".join(map(str, self.actions))
        if self.clean:
            return (f"seed {self.seed}: clean ({plan}; {self.expected} bars, {self.dead_letters} dead letters, "
                    f"{self.seconds:.0f}s)")  # fmt: skip
        parts = [f"missing {len(self.missing)} {self.missing[:3]}" if self.missing else "",
                 f"differing {len(self.differing)} {self.differing[:3]}" if self.differing else "",
                 f"unexpected {len(self.unexpected)} {self.unexpected[:3]}" if self.unexpected else "",
                 f"re-emitted bars differ {self.reemitted_differ[:2]}" if self.reemitted_differ else "",
                 f"{self.dead_letters_without_reason} dead letters without a reason"
                 if self.dead_letters_without_reason else "",
                 f"crashed: {'; '.join(self.crashed)}" if self.crashed else "",
                 self.error]  # fmt: skip
        letters = ", ".join(f"{n} {reason}" for reason, n in sorted(self.reasons.items())) or "none"
        parts.append(f"dead letters: {letters}")
        text = f"seed {self.seed}: FAILED ({plan}): " + "; ".join(p for p in parts if p)
        return "\n    ".join([text, *self.diagnosis])


class Worker:
    """``marketprism worker`` as a child process, signalled by its PID only; every start appends to one log."""

    def __init__(self, settings: Settings, work: Path, name: str = "worker", env: dict[str, str] | None = None):
        self.settings = settings
        self.env = env or {}
        self.log_path = work / f"{name}.log"
        self.state_dir = work / f"{name}-state"
        self.process: asyncio.subprocess.Process | None = None
        self.starts = 0

    async def start(self) -> None:
        env = (
            os.environ
            | {
                "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": self.settings.kafka.bootstrap_servers,
                "MARKETPRISM_TOPIC_PREFIX": self.settings.topic_prefix,
                "MARKETPRISM_STATE_DIR": str(self.state_dir),
                "MARKETPRISM_METRICS_PORT": "0",
                "MARKETPRISM_LOG_LEVEL": "INFO",
            }
            | self.env
        )
        with self.log_path.open("ab") as output:
            output.write(f"\n===== start {self.starts + 1} =====\n".encode())
            output.flush()
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "pipeline", "worker", *WORKER_ARGS,
                env=env, stdout=output, stderr=subprocess.STDOUT,
            )  # fmt: skip
        self.starts += 1

    def signal(self, sig: signal.Signals) -> None:
        if self.process is not None and self.process.returncode is None:
            os.kill(self.process.pid, sig)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None

    async def wait_assigned(self, limit_s: float = 120.0) -> None:
        """Until the latest start logged a non-empty assignment."""
        async with asyncio.timeout(limit_s):
            while True:
                text = self.log_text().rsplit("===== start", 1)[-1]
                if re.search(r"aggregator assigned \S+ partitions \[[0-9]", text):
                    return
                if not self.alive:
                    raise RuntimeError(f"worker exited with {self.process.returncode if self.process else None}")
                await asyncio.sleep(0.2)

    async def stop(self) -> None:
        if self.process is None or self.process.returncode is not None:
            return
        self.signal(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.process.terminate()
        try:
            await asyncio.wait_for(self.process.wait(), 30)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


async def _read(
    settings: Settings, name: str, limit_s: float = 60.0, raw: bool = False
) -> list[tuple[int, int, bytes]]:
    """``(partition, offset, value)`` of every record of registry topic ``name`` (``raw``: a topic name under the
    prefix, not in the registry), start to the log end now."""
    consumer = make_consumer(settings.kafka, group_id=None)
    await consumer.start()
    try:
        topic = f"{settings.topic_prefix}{name}" if raw else settings.topic(name)
        await consumer.topics()
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        if not partitions:
            return []
        consumer.assign(partitions)
        await consumer.seek_to_beginning(*partitions)
        ends = await log_end_offsets(settings.kafka, partitions)
        out: list[tuple[int, int, bytes]] = []
        async with asyncio.timeout(limit_s):
            for tp in partitions:
                while await consumer.position(tp) < ends[tp]:
                    for m in (await consumer.getmany(tp, timeout_ms=1000)).get(tp, []):
                        out.append((m.partition, m.offset, m.value or b""))
        return out
    finally:
        await consumer.stop()


class BarReader:
    """Every bar on the bar topics, read on from where the last call stopped."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.bars: dict[tuple[str, str, str, int], Bar] = {}
        self.reemitted_differ: list[str] = []
        self._consumer = make_consumer(settings.kafka, settings.topic(BARS_1S.name), settings.topic(BARS_1M.name),
                                       group_id=None)  # fmt: skip

    async def __aenter__(self) -> BarReader:
        await self._consumer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._consumer.stop()

    async def poll(self) -> None:
        for messages in (await self._consumer.getmany(timeout_ms=500)).values():
            for m in messages:
                bar = decode(Bar, m.value or b"")
                first = self.bars.setdefault(bar_key(bar), bar)
                if first != bar:
                    self.reemitted_differ.append(f"{bar_key(bar)} offset {m.offset}")


async def _until(condition: Callable[[], bool], limit_s: float, step_s: float = 0.1) -> None:
    async with asyncio.timeout(limit_s):
        while not condition():  # noqa: ASYNC110 - polls other components' counters (no event to wait on)
            await asyncio.sleep(step_s)


async def run_round(
    base: Settings,
    seed: int,
    mode: str,
    capture_dir: Path,
    work: Path,
    speed: float,
    relay: Relay | None = None,
    worker_env: dict[str, str] | None = None,
) -> RoundResult:
    """One seeded round (see the module docstring); never raises for what it finds, only reports it.
    ``worker_env``: extra environment of the worker processes (e.g. shorter group timeouts)."""
    from pipeline.aggregation.app import ensure_internal_topics
    from pipeline.collectors.output import Output
    from pipeline.collectors.runtime import Collector
    from pipeline.collectors.venues import VENUES
    from pipeline.infra.scratch import with_fresh_prefix
    from pipeline.kafka import make_record_producer
    from pipeline.replay.server import ReplayServer

    rng = random.Random(seed)  # noqa: S311 - reproducible choices, not secrets
    capture_name = rng.choice(sorted(CAPTURES)) if mode == "chaos" else "binance_futures"
    file_name, venue_id, symbols = CAPTURES[capture_name]
    result = RoundResult(seed, schedule(seed, mode, drops=relay is not None))
    started = time.monotonic()
    settings = await with_fresh_prefix(base, "chaos")
    await ensure_internal_topics(settings)
    await asyncio.to_thread(work.mkdir, parents=True, exist_ok=True)
    capture = capture_dir / file_name
    server = ReplayServer([capture], speed=speed)
    await server.start()
    worker = Worker(settings, work, env=worker_env)
    total = len(server.files[0].frames)
    stop = asyncio.Event()
    collecting: asyncio.Task[None] | None = None
    try:
        await worker.start()
        await worker.wait_assigned()
        venue_cls = VENUES[venue_id]
        venue = venue_cls(symbols, ws_url=server.url_for(venue_cls.ws_url), rest_url=server.url_for(venue_cls.rest_url))
        output = Output(make_record_producer(settings.kafka, settings.topic_prefix))
        collector = Collector(settings, [venue], output)
        collecting = asyncio.create_task(collector.run(stop))
        state = server.state[capture]
        for action in result.actions:
            threshold = action.at * total
            await _until(lambda: state.frames_sent >= threshold or state.completed > 0, 300)  # noqa: B023
            if action.kind == "kill":
                worker.signal(signal.SIGKILL)
                assert worker.process is not None
                await worker.process.wait()
                await worker.start()
            elif action.kind == "term":
                await worker.stop()
                await worker.start()
            elif action.kind == "drop":
                assert relay is not None
                await relay.drop(action.pause_s)
            else:
                worker.signal(signal.SIGSTOP)
                await asyncio.sleep(action.pause_s)
                worker.signal(signal.SIGCONT)
        runtime = collector.runtimes[0]
        await _until(lambda: state.completed >= 1 and runtime.stats.frames >= total
                     and runtime.rest.waiting("snapshot") == 0, 300)  # fmt: skip
        stop.set()
        async with asyncio.timeout(120):
            await collecting

        records = await _read(settings, TRADE_BATCHES.name)
        want = expected_bars(accepted(trades_of(records), LATENESS_MS * 1000, GRACE_MS * 1000))
        result.expected = len(want)
        async with BarReader(settings) as reader:
            with contextlib.suppress(TimeoutError):  # what is missing after the bound is reported below
                async with asyncio.timeout(120):
                    while not set(want) <= set(reader.bars):
                        await reader.poll()
                        if not worker.alive:
                            break
            await reader.poll()  # anything emitted meanwhile (an unexpected bar shows up here)
        got = {key: bar_fields(bar) for key, bar in reader.bars.items()}
        result.distinct = len(got)
        result.missing = sorted(set(want) - set(got))
        result.unexpected = sorted(set(got) - set(want))
        result.differing = sorted(k for k in set(want) & set(got) if want[k] != got[k])
        result.reemitted_differ = reader.reemitted_differ
        for _, _, value in await _read(settings, DLQ.name):
            letter = decode(DeadLetter, value)
            result.dead_letters += 1
            result.reasons[letter.reason] = result.reasons.get(letter.reason, 0) + 1
            if not letter.reason or not letter.error:
                result.dead_letters_without_reason += 1
        if result.missing or result.differing or result.unexpected:
            result.diagnosis = await _diagnose(settings, records)
        if not worker.alive:
            code = worker.process.returncode if worker.process else None
            result.crashed.append(f"worker exited with {code} (log {worker.log_path})")
        for pattern in CRASH_PATTERNS:
            if pattern in worker.log_text():
                result.crashed.append(f"worker log has {pattern!r} ({worker.log_path})")
    except Exception as exc:  # a round that cannot finish is a failed round, with its seed
        log.exception("chaos round %d", seed)
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        if collecting is not None and not collecting.done():
            collecting.cancel()
            await asyncio.gather(collecting, return_exceptions=True)  # a cancellation of this round still propagates
        await worker.stop()
        await server.stop()
        result.seconds = time.monotonic() - started
    return result


async def _diagnose(settings: Settings, trade_records: list[tuple[int, int, bytes]]) -> list[str]:
    """Per input partition: the markets on it, its trade/BBO log ends, and the last state the worker saved."""
    import json

    markets: dict[int, set[str]] = {}
    for partition, _, value in trade_records:
        batch = decode(TradeBatch, value)
        markets.setdefault(partition, set()).add(batch.symbol)
    ends = {"trades": {}, "bbo": {}}  # type: dict[str, dict[int, int]]
    for name, stream in ((TRADE_BATCHES.name, "trades"), (BBO.name, "bbo")):
        for partition, offset, _ in await _read(settings, name):
            ends[stream][partition] = max(ends[stream].get(partition, -1), offset)
    states: dict[int, bytes] = {}
    for partition, _, value in await _read(settings, "aggregator-bar-state-batches-changelog", raw=True):
        states[partition] = value
    lines = []
    for partition in sorted(set(ends["trades"]) | set(ends["bbo"]) | set(states)):
        saved = json.loads(states[partition]) if partition in states else {}
        windows = sum(len(sym[2]) + len(sym[3]) for sym in saved.get("symbols", {}).values())
        lines.append(
            f"partition {partition} {sorted(markets.get(partition, ()))}: last trade/bbo offsets "
            f"{ends['trades'].get(partition, -1)}/{ends['bbo'].get(partition, -1)}; saved state applied "
            f"{saved.get('trade_offset')}/{saved.get('bbo_offset')}, trade wm {saved.get('trade_wm')}, "
            f"{windows} windows open"
        )
    return lines


async def run_chaos(
    settings: Settings, rounds: int, seed: int, mode: str, capture_dir: Path, work: Path, speed: float = 10.0,
    echo: Callable[[str], object] = print, relay: Relay | None = None, worker_env: dict[str, str] | None = None,
) -> list[RoundResult]:  # fmt: skip
    """``rounds`` rounds with seeds ``seed``, ``seed + 1``, ...; each round's line is echoed as it ends."""
    results = []
    for n in range(rounds):
        result = await run_round(
            settings, seed + n, mode, capture_dir, work / f"round-{seed + n}", speed, relay, worker_env
        )
        echo(result.line())
        results.append(result)
    return results


def summary(results: list[RoundResult]) -> str:
    clean = [r.seed for r in results if r.clean]
    failed = [r.seed for r in results if not r.clean]
    text = f"{len(clean)}/{len(results)} rounds clean"
    if failed:
        text += f"; failing seeds (replay with --seed S --rounds 1): {failed}"
    return text
