"""Differential check for refactors that must not change behaviour: deterministic outputs, hashed.

``.venv/bin/python tools/differential.py record DIR`` writes the outputs of the current tree into ``DIR``;
``python tools/differential.py compare BEFORE AFTER`` reports every difference (exit 1 when any).

What is recorded (every projection is deterministic: no wall-clock field enters it):

(a) ``captures/<file>.bin``: each of the five real captures in ``../shared/replay`` (binance,
    binance_futures, okx, coinbase, kraken: the ones the collector benchmark uses) fed line by line
    through the collectors' :class:`~pipeline.collectors.runtime.VenueRuntime` (venue parse and
    normalise, books, checks, dedup) with recorded REST bodies answering the snapshot requests. Every
    record the runtime hands on is written as ``topic TAB key TAB value`` (the encoded topic value,
    byte for byte); dead letters as ``DEAD TAB reason TAB error TAB sha256(payload)``. The receipt
    times come from the capture, so nothing depends on the clock. Feed metrics (a timer's work) are
    not part of the projection.
(b) ``simulator/``: the simulator's default scenario (``pipeline/simulator/scenarios/default.yaml``,
    seed 7, 180 simulated seconds) run by its pure :class:`~pipeline.simulator.engine.Engine`:
    ``frames.bin`` (every frame: time, venue, key, kind, text) and ``labels.bin``; then those frames
    delivered, in process, over one simulated connection per collector connection plan (subscribe
    frames answered by the simulator protocol, REST snapshots by its ``rest``, disconnect storms
    re-connecting at once) into the collectors' runtimes: ``records.bin`` as in (a) with the
    simulated time as receipt time; then every ``Trade`` and ``Bbo`` of it, in that order, into one
    aggregation :class:`~pipeline.aggregation.engine.PartitionAggregator` (default window policy,
    ``now`` = the record's receipt time, offsets counting records, windows closed after each record
    and at the end one hour of simulated time later): ``bars.bin``, the encoded ``Bar`` values; then
    those records and bars through the ClickHouse sink (embedded chdb, its own migrations, one partition
    per topic, offsets counting records): ``rows.bin``, every table's rows ordered by coordinates, every
    column but the wall-clock ``_ingested_at``. This is the deterministic core of the pipeline; the broker
    round trip and the Faust worker's batching by wall time are not in it.
(c) ``nab.json``: the project's NAB scoring run (``run_benchmark`` of the NAB harness, as ``marketprism
    bench nab`` runs it, default ``DetectorConfig``, 2 processes) on a fixed subset of five corpus files
    (``NAB_FILES`` below) so it finishes in minutes; every profile's result (score, threshold, TP/FP/FN,
    raw, null, perfect) as sorted JSON.

``summary.json`` holds the sha256 and size of every file; ``compare`` diffs those and, on a mismatch,
the first differing line.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("MARKETPRISM_SHARED_DIR") or ROOT.parent / "shared")

CAPTURES: dict[str, tuple[str, list[str]]] = {
    "binance.txt": ("binance", ["NKN-USDT", "BLZ-ETH", "LRC-BTC", "RUNE-EUR"]),
    "binance_futures.txt": ("binance_usdm", ["SUSHI-USDT-PERP", "AKRO-USDT-PERP", "KEEP-USDT-PERP", "CTK-USDT-PERP"]),
    "okx.txt": ("okx", ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]),
    "coinbase.txt": ("coinbase", ["BTC-USD", "ETH-USD"]),
    "kraken.txt": (
        "kraken",
        [
            "WAVES-EUR",
            "XMR-USD",
            "KSM-BTC",
            "GRT-ETH",
            "SC-EUR",
            "ETH-CHF",
            "OCEAN-BTC",
            "OMG-USD",
            "BTC-CHF",
            "ADA-BTC",
        ],
    ),
}


def _topic_of(record: Any) -> str:
    """The topic of a collector record, from wherever the tree under test keeps that map."""
    try:
        from pipeline.contracts.topics import topic_for

        return topic_for(type(record)).name
    except ImportError:
        from pipeline.collectors.base import TOPIC_OF  # the layout before topics became objects

        return TOPIC_OF[type(record)]


class Tap:
    """Stands in for the collectors' Output: keeps every record and dead letter, in order."""

    def __init__(self) -> None:
        self.lines: list[bytes] = []
        self.records: list[Any] = []
        self.broken_books: set[tuple[str, str]] = set()
        self.has_room = True

    def record(self, record: Any, value: bytes | None = None) -> bool:
        from pipeline.contracts import encode, market_key

        value = encode(record) if value is None else value
        key = market_key(record.exchange, record.symbol)
        self.lines.append(_topic_of(record).encode() + b"\t" + key + b"\t" + value)
        self.records.append(record)
        return True

    def metric(self, record: Any) -> bool:
        return True

    def dead(self, reason: str, error: str, payload: str | bytes, exchange: str) -> bool:
        raw = payload.encode() if isinstance(payload, str) else payload
        self.lines.append(f"DEAD\t{exchange}\t{reason}\t{error}\t{hashlib.sha256(raw).hexdigest()}".encode())
        return True


def _key(url: str, params: tuple[tuple[str, str], ...] = ()) -> tuple[str, tuple[tuple[str, str], ...]]:
    parts = urlsplit(url)
    return parts.path, tuple(sorted((*parse_qsl(parts.query), *params)))


def captures_through_collectors(out: Path) -> None:
    from pipeline.collectors.runtime import VenueRuntime
    from pipeline.collectors.venues import VENUES

    try:
        from pipeline.collectors.capture import read_capture
    except ImportError:
        from pipeline.replay.capture import read_capture  # the layout before the capture format moved

    (out / "captures").mkdir(parents=True, exist_ok=True)
    for name, (venue_id, symbols) in CAPTURES.items():
        tap = Tap()
        runtime = VenueRuntime(VENUES[venue_id](symbols), tap)  # type: ignore[arg-type]
        plan = runtime.plans[0]
        runtime.connected(plan)
        for line in read_capture(SHARED / "replay" / name):
            if line.kind == "ws_in":
                runtime.frame(plan, line.payload, line.ts_recv_us)
            elif line.kind == "rest":
                wanted = _key(line.endpoint)
                match = next((r for r in runtime.rest.requested() if _key(r.url, r.params) == wanted), None)
                if match is not None:
                    runtime.rest_body(match, line.payload.encode(), line.ts_recv_us)
        (out / "captures" / f"{name}.bin").write_bytes(b"\n".join(tap.lines) + b"\n")


def simulator_through_pipeline(out: Path) -> None:
    from pipeline.aggregation.engine import PartitionAggregator
    from pipeline.aggregation.windows import WindowPolicy
    from pipeline.collectors.runtime import VenueRuntime
    from pipeline.collectors.venues import VENUES
    from pipeline.contracts import Bbo, Trade, encode
    from pipeline.simulator.engine import Engine
    from pipeline.simulator.protocols import Connection
    from pipeline.simulator.scenario import load_scenario

    scenario = load_scenario()
    engine = Engine(scenario)
    sim = out / "simulator"
    sim.mkdir(parents=True, exist_ok=True)
    tap = Tap()
    runtimes: dict[str, VenueRuntime] = {}
    conns: dict[str, list[tuple[Any, Connection]]] = {}
    answered: dict[str, set[Any]] = {}
    ids = iter(range(1, 1_000_000))

    def deliver(venue: str, plan: Any, conn: Connection, texts: list[str], now: int, key: str | None = None) -> None:
        """``texts`` to the runtime as the simulator's server renders them (``key``: a data frame's, else a reply)."""
        proto = engine.protocols[venue]
        for text in texts:
            result = runtimes[venue].frame(plan, proto.render(conn, key, text), now)
            if result is not None and result.resubscribe:
                for frame in result.resubscribe:
                    deliver(venue, plan, conn, proto.message(conn, frame, now), now)

    def rest(venue: str, now: int) -> None:
        runtime, proto = runtimes[venue], engine.protocols[venue]
        for request in sorted(runtime.rest.requested(), key=lambda r: (r.url, r.params)):
            if request in answered[venue]:
                continue
            answered[venue].add(request)
            runtime.rest._waiting.discard(request)
            parts = urlsplit(request.url)
            tail = parts.path.removeprefix(f"/{venue}")
            status, body = proto.rest(tail, dict((*parse_qsl(parts.query), *request.params)), now)
            if status == 200:
                runtime.rest_body(request, body.encode(), now)

    def connect(venue: str, now: int) -> None:
        runtime, proto = runtimes[venue], engine.protocols[venue]
        conns[venue] = []
        for plan in runtime.plans:
            parts = urlsplit(plan.url)
            conn = Connection(next(ids), path=parts.path.removeprefix(f"/{venue}"))
            conns[venue].append((plan, conn))
            runtime.connected(plan)
            deliver(venue, plan, conn, proto.open(conn, dict(parse_qsl(parts.query)), now), now)
            for frame in plan.subscribe:
                deliver(venue, plan, conn, proto.message(conn, frame, now), now)
        rest(venue, now)

    for venue, symbols in scenario.symbols.items():
        runtimes[venue] = VenueRuntime(
            VENUES[venue](symbols, ws_url=f"ws://sim/{venue}", rest_url=f"http://sim/{venue}"),
            tap,  # type: ignore[arg-type]
        )
        answered[venue] = set()
        connect(venue, scenario.start_us)

    frames: list[bytes] = []
    while engine.next_time() is not None:
        for frame in engine.step():
            frames.append(f"{frame.t_us}\t{frame.venue}\t{frame.key}\t{frame.kind}\t{frame.text}".encode())
            venue = frame.venue
            if venue not in runtimes:
                continue
            if frame.kind == "disconnect":
                for plan, _ in conns[venue]:
                    runtimes[venue].disconnected(plan, "simulated disconnect")
                connect(venue, frame.t_us)
                continue
            for plan, conn in conns[venue]:
                if frame.key not in conn.keys:
                    continue
                if frame.kind == "skip":
                    conn.seq += 1
                    continue
                deliver(venue, plan, conn, [frame.text], frame.t_us, frame.key)
            rest(venue, frame.t_us)
    (sim / "frames.bin").write_bytes(b"\n".join(frames) + b"\n")
    (sim / "labels.bin").write_bytes(b"\n".join(encode(label) for label in engine.labels) + b"\n")
    (sim / "records.bin").write_bytes(b"\n".join(tap.lines) + b"\n")

    aggregator = PartitionAggregator(WindowPolicy(), scenario.start_us)
    bars: list[bytes] = []
    last = scenario.start_us
    for offset, record in enumerate(tap.records):
        if isinstance(record, Trade):
            aggregator.add_trade(offset, record, record.ts_recv)
        elif isinstance(record, Bbo):
            aggregator.add_bbo(offset, record, record.ts_recv)
        else:
            continue
        last = max(last, record.ts_recv)
        bars.extend(encode(bar) for bar in aggregator.close_windows(last))
    bars.extend(encode(bar) for bar in aggregator.close_windows(last + 3_600_000_000))
    (sim / "bars.bin").write_bytes(b"\n".join(bars) + b"\n")
    sink_rows(sim, tap.lines, bars)


def sink_rows(sim: Path, lines: list[bytes], bars: list[bytes]) -> None:
    """(b, rows) The simulated records and the bars through the ClickHouse sink (embedded chdb, the sink's own
    migrations), each topic's rows read back ordered by coordinates, every column but ``_ingested_at``."""
    import asyncio
    import tempfile

    from pipeline.contracts import Bar, decode, load_registry
    from pipeline.sinks.factory import make_sink
    from pipeline.sinks.schema import table_for

    values: list[tuple[str, bytes]] = []
    for line in lines:
        topic, _, rest = line.partition(b"\t")
        if topic != b"DEAD":
            values.append((topic.decode(), rest.partition(b"\t")[2]))
    values += [(f"md.bars.{decode(Bar, value).interval}.v1", value) for value in bars]

    async def run(path: str) -> list[bytes]:
        registry = load_registry()
        sink = make_sink(f"chdb://{path}", registry)
        await sink.setup()
        out: list[bytes] = []
        try:
            offsets: dict[str, int] = {}
            for n, (topic, value) in enumerate(values, 1):
                offset = offsets.get(topic, 0)
                sink.add(topic, 0, offset, value)
                offsets[topic] = offset + 1
                if n % 5000 == 0:
                    assert not (await sink.flush()).dead
            assert not (await sink.flush()).dead
            for name in sorted(offsets):
                table = table_for(registry.get(name)).name
                rows = await sink.fetch(
                    f"SELECT * EXCEPT (_ingested_at) FROM {table} ORDER BY _topic, _partition, _offset"  # noqa: S608
                )
                out += [f"{name}\t{row!r}".encode() for row in rows]
        finally:
            await sink.close()
        return out

    with tempfile.TemporaryDirectory() as tmp:
        rows = asyncio.run(run(str(Path(tmp) / "db")))
    (sim / "rows.bin").write_bytes(b"\n".join(rows) + b"\n")


NAB_FILES = (
    "realKnownCause/nyc_taxi.csv",
    "realKnownCause/machine_temperature_system_failure.csv",
    "realAWSCloudwatch/ec2_cpu_utilization_24ae8d.csv",
    "artificialWithAnomaly/art_daily_jumpsup.csv",
    "realTweets/Twitter_volume_AAPL.csv",
)


def nab_scores(out: Path) -> None:
    import dataclasses
    import tempfile

    from pipeline.anomaly.ensemble import DetectorConfig

    run: Callable[..., Any]
    try:
        from pipeline.bench.anomaly.nab import run_benchmark as run
    except ImportError:
        from pipeline.anomaly.nab import run_benchmark as run  # the layout before the tooling wing
    with tempfile.TemporaryDirectory() as results:
        scores = run(SHARED / "nab", Path(results), DetectorConfig(), files=list(NAB_FILES), jobs=2)
    rows = [dataclasses.asdict(r) if dataclasses.is_dataclass(r) else repr(r) for r in scores]
    (out / "nab.json").write_text(json.dumps(rows, indent=1, sort_keys=True, default=repr) + "\n")


def record(out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    captures_through_collectors(out)
    simulator_through_pipeline(out)
    nab_scores(out)
    summary = {
        str(p.relative_to(out)): {"sha256": hashlib.sha256(p.read_bytes()).hexdigest(), "bytes": p.stat().st_size}
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "summary.json"
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, sort_keys=True) + "\n")
    for name, item in summary.items():
        print(f"{item['sha256']}  {item['bytes']:>10}  {name}")


def compare(before: Path, after: Path) -> int:
    a = json.loads((before / "summary.json").read_text())
    b = json.loads((after / "summary.json").read_text())
    bad = 0
    for name in sorted(set(a) | set(b)):
        if a.get(name) == b.get(name):
            print(f"same       {name}  {a[name]['sha256'][:16]}")
            continue
        bad += 1
        print(f"DIFFERENT  {name}: {a.get(name)} != {b.get(name)}")
        if name in a and name in b:
            la, lb = (before / name).read_bytes().split(b"\n"), (after / name).read_bytes().split(b"\n")
            for i, (x, y) in enumerate(zip(la, lb, strict=False)):
                if x != y:
                    print(f"  line {i + 1}:\n  - {x[:300]!r}\n  + {y[:300]!r}")
                    break
            else:
                print(f"  lengths {len(la)} != {len(lb)} lines")
    print("identical" if not bad else f"{bad} file(s) differ")
    return 1 if bad else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "record":
        record(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "compare":
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    else:
        sys.exit(__doc__)
