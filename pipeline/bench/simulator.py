"""``marketprism bench simulate``: frames per second of the simulator.

Baseline: the pure engine encoding the frames the clients subscribe to, no sockets. Measured: one
simulator process (its own OS process, running as fast as it can) serving 4 venues x N symbols to
one websocket client per venue subscribed to its main channels; frames counted by the clients.
Both per wall second and per CPU second of the process doing the work (on a shared machine the
CPU figure is the steadier one). Median of runs.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import statistics
import time
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

import aiohttp

from pipeline.simulator.engine import Engine
from pipeline.simulator.instruments import instrument
from pipeline.simulator.protocols import Connection
from pipeline.simulator.scenario import Scenario, scenario_from

ASSETS = ("BTC", "ETH", "SOL", "XRP", "DOGE", "ADA", "AVAX", "LINK", "DOT", "LTC", "BNB", "TRX", "ATOM", "NEAR")


def bench_scenario(seconds: float, symbols: int) -> Scenario:
    assets = ASSETS[:symbols]
    return scenario_from({
        "name": "bench",
        "duration_s": seconds,
        "symbols": {
            "binance": [f"{a}-USDT" for a in assets],
            "okx": [f"{a}-USDT" for a in assets],
            "coinbase": [f"{a}-USD" for a in assets],
            "kraken": [f"{a}-USD" for a in assets],
        },
    })  # fmt: skip


def subscribe_frames(scenario: Scenario) -> dict[str, tuple[str, list[str]]]:
    """Per venue of the scenario: a websocket path and the frames that subscribe to its main channels."""
    import orjson

    out: dict[str, tuple[str, list[str]]] = {}
    for venue, symbols in scenario.symbols.items():
        raws = [instrument(venue, symbol).raw for symbol in symbols]
        if venue in ("binance", "binance_usdm"):
            channels = ("depth@100ms", "bookTicker") + (("trade",) if venue == "binance" else ())
            streams = [f"{raw.lower()}@{c}" for raw in raws for c in channels]
            route = "/public" if venue == "binance_usdm" else ""
            out[venue] = (f"{route}/stream?streams=" + "/".join(streams), [])
        elif venue == "okx":
            args = [{"channel": c, "instId": raw} for raw in raws for c in ("books", "trades", "tickers")]
            out[venue] = ("/ws/v5/public", [orjson.dumps({"op": "subscribe", "args": args}).decode()])
        elif venue == "coinbase":
            out[venue] = ("", [
                orjson.dumps({"type": "subscribe", "product_ids": raws, "channel": c}).decode()
                for c in ("level2", "market_trades", "ticker", "heartbeats")
            ])  # fmt: skip
        else:
            out[venue] = ("/v2", [
                orjson.dumps({"method": "subscribe", "params": {"channel": c, "symbol": raws}}).decode()
                for c in ("book", "trade", "ticker")
            ])  # fmt: skip
    return out


async def collect(port: int, scenario: Scenario) -> tuple[dict[str, list[str]], float]:
    """One client per venue subscribed to its main channels, then ``POST /sim/start``: every text each
    received until the server closed it, and the ``perf_counter`` time of the start."""
    received: dict[str, list[str]] = {}
    async with aiohttp.ClientSession() as session:
        sockets = {}
        for venue, (path, frames) in subscribe_frames(scenario).items():
            ws = await session.ws_connect(f"ws://127.0.0.1:{port}/{venue}{path}", max_msg_size=0)
            for frame in frames:
                await ws.send_str(frame)
            sockets[venue] = ws
        await asyncio.sleep(0.5)  # acks and snapshots before the clock starts
        started = time.perf_counter()
        await session.post(f"http://127.0.0.1:{port}/sim/start")

        async def drain(venue: str, ws: aiohttp.ClientWebSocketResponse) -> None:
            received[venue] = [msg.data async for msg in ws if msg.type == aiohttp.WSMsgType.TEXT]

        await asyncio.gather(*(drain(venue, ws) for venue, ws in sockets.items()))
    return received, started


def subscribed_keys(engine: Engine, scenario: Scenario) -> dict[str, set[str]]:
    """The keys the bench clients subscribe to, per venue (as the server would record them)."""
    keys: dict[str, set[str]] = {}
    for venue, (path, frames) in subscribe_frames(scenario).items():
        proto = engine.protocols[venue]
        url = urlsplit(path)
        conn = Connection(0, path=url.path)
        proto.open(conn, dict(parse_qsl(url.query)), engine.now_us)
        for frame in frames:
            proto.message(conn, frame, engine.now_us)
        keys[venue] = set(conn.keys)
    return keys


def encode_rate(scenario: Scenario) -> tuple[float, float]:
    """Baseline: the frames the clients subscribe to, encoded by the engine with no sockets.
    Returns frames per wall second and per CPU second of this process."""
    engine = Engine(scenario)
    keys = subscribed_keys(engine, scenario)
    for venue, proto in engine.protocols.items():
        proto.want = lambda key, wanted=keys[venue]: key in wanted  # type: ignore[misc]
    wall, cpu = time.perf_counter(), time.process_time()
    frames = sum(1 for frame in engine.run() if frame.key in keys[frame.venue])
    return frames / (time.perf_counter() - wall), frames / (time.process_time() - cpu)


def _serve(scenario_json: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    from pipeline.simulator.server import SimulatorServer

    scenario = Scenario.model_validate_json(scenario_json)

    async def main() -> None:
        async with SimulatorServer(scenario, speed=0.0, hold=True) as server:
            results.put(server.port)
            await server.started.wait()
            cpu = time.process_time()
            await server.run()
            results.put((server.frames_sent, time.process_time() - cpu))

    asyncio.run(main())


def serve_rate(scenario: Scenario) -> tuple[float, float]:
    """Frames per wall second the clients received, and per CPU second of the server process."""
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    proc = ctx.Process(target=_serve, args=(scenario.model_dump_json(), results), daemon=True)
    proc.start()
    try:
        port = results.get(timeout=60)
        received, started = asyncio.run(collect(port, scenario))
        wall = time.perf_counter() - started
        sent, cpu = results.get(timeout=60)
    finally:
        proc.join(timeout=30)
        if proc.is_alive():
            proc.terminate()
            proc.join()
    return sum(len(texts) for texts in received.values()) / wall, sent / cpu


@dataclass
class BenchResult:
    venues: int
    symbols: int
    seconds: float
    encode: list[tuple[float, float]]
    served: list[tuple[float, float]]

    def lines(self) -> list[str]:
        def med(rows: list[tuple[float, float]], i: int) -> float:
            return statistics.median(row[i] for row in rows)

        def runs(rows: list[tuple[float, float]], i: int) -> list[int]:
            return [round(row[i]) for row in rows]

        return [
            f"simulate: {self.venues} venues x {self.symbols} symbols, {self.seconds:g} simulated s per run, "
            f"{len(self.served)} runs (medians)",
            f"baseline, same frames encoded without sockets: {med(self.encode, 0):,.0f} frames/s wall, "
            f"{med(self.encode, 1):,.0f} frames/CPU-s  runs {runs(self.encode, 0)}",
            f"served to websocket clients (server process):  {med(self.served, 0):,.0f} frames/s wall, "
            f"{med(self.served, 1):,.0f} frames/CPU-s  runs {runs(self.served, 0)}",
            f"ratio served/baseline: {med(self.served, 0) / med(self.encode, 0):.2f} wall, "
            f"{med(self.served, 1) / med(self.encode, 1):.2f} CPU",
        ]


def run_bench(seconds: float, runs: int, symbols: int) -> BenchResult:
    scenario = bench_scenario(seconds, symbols)
    encode = [encode_rate(scenario) for _ in range(runs)]
    served = [serve_rate(scenario) for _ in range(runs)]
    return BenchResult(len(scenario.symbols), symbols, seconds, encode, served)
