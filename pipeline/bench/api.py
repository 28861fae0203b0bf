"""``marketprism bench api``: the API under load from another process, with a baseline in the same run.

1. Requests/s and latency of ``GET /api/v1/alerts`` (``alerts`` current alerts, a filtered page of ``page``)
   with ``connections`` concurrent clients, against the same server answering a static JSON document of the
   same size (authenticated the same way, and without authentication): the difference is what filtering,
   paging and encoding cost. One uvicorn server process; load from Debian's ``wrk`` when installed, else from
   a separate Python process (httpx).
2. Record -> stream latency: ``subscribers`` SSE clients (a separate process) on a server reading a scratch
   broker; alert records produced on ``ops.alerts.v1`` carry their send time; each client notes when each
   arrives. p50/p99 over every (record, client) pair.

The server runs as ``python -m pipeline.bench.api serve ...`` (a child process, stopped by PID at the end).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.settings import ApiSettings, KafkaSettings, Settings

SENT = "bench_sent_us"
T0 = 1_700_000_000_000_000


def _alerts(n: int) -> list[Any]:
    from pipeline.contracts.records import Alert

    venues = ("binance", "okx", "coinbase", "kraken", "binance_usdm")
    rules = ("FeedStalled", "FeedLatencyHigh", "SpreadBlowout", "PriceSpikeAnomaly", "VenueDivergence")
    out = []
    for i in range(n):
        venue, rule = venues[i % len(venues)], rules[(i // 5) % len(rules)]
        out.append(
            Alert(
                fingerprint=f"{i:016x}",
                rule=rule,
                state="firing" if i % 7 else "acked",
                severity=("P1", "P2", "P3", "P4")[i % 4],  # type: ignore[arg-type]
                labels={
                    "alertname": rule,
                    "severity": ("P1", "P2", "P3", "P4")[i % 4],
                    "exchange": venue,
                    "symbol": f"SYM{i % 50}-USDT",
                    "stream": "book",
                    "team": "market-data",
                },
                annotations={"summary": f"{venue} SYM{i % 50}-USDT: {rule} (value {i})"},
                ts_event=T0 + i * 1000,
                active_since=T0,
                fired_at=T0 + i,
                value=float(i),
                version=2,
            )
        )
    return out


# ---------------------------------------------------------------- the server child


def _serve(args: argparse.Namespace) -> None:
    import uvicorn
    from fastapi.responses import Response

    from pipeline.api.app import create_app
    from pipeline.api.deps import viewer
    from pipeline.api.views import LiveViews
    from pipeline.settings import load_settings

    settings = load_settings()
    views = LiveViews()
    if not args.read_topics:
        for alert in _alerts(args.alerts):
            views.alerts.apply(alert)
    app = create_app(settings, read_topics=args.read_topics, views=views)
    static = Path(args.static).read_bytes() if args.static else b"{}"

    from fastapi import Depends

    @app.get("/bench/static-auth", include_in_schema=False, dependencies=[Depends(viewer)])
    async def static_auth() -> Response:
        return Response(static, media_type="application/json")

    @app.get("/bench/static", include_in_schema=False)
    async def static_open() -> Response:
        return Response(static, media_type="application/json")

    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False, log_config=None)


class _Server:
    """The API server child process (own session; stopped by PID)."""

    def __init__(self, settings: Settings, port: int, alerts: int, read_topics: bool, static: Path | None):
        self.port = port
        env = os.environ | {
            "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": settings.kafka.bootstrap_servers,
            "MARKETPRISM_TOPIC_PREFIX": settings.topic_prefix,
            "MARKETPRISM_API__JWT_SECRET": settings.api.jwt_secret.get_secret_value()
            if settings.api.jwt_secret
            else "",
            "MARKETPRISM_API__RATE_LIMIT_PER_S": "1000000",
            "MARKETPRISM_API__RATE_LIMIT_BURST": "1000000",
            "MARKETPRISM_API__SSE_QUEUE": "10000",
            "MARKETPRISM_METRICS_PORT": "0",
            "MARKETPRISM_LOG_LEVEL": "WARNING",
            "MARKETPRISM_STATE_DIR": str(settings.state_dir),
        }
        argv = [sys.executable, "-m", "pipeline.bench.api", "serve", "--port", str(port), "--alerts", str(alerts)]
        if read_topics:
            argv.append("--read-topics")
        if static is not None:
            argv += ["--static", str(static)]
        self.proc = subprocess.Popen(argv, env=env, start_new_session=True)  # noqa: S603 - our own module

    def wait_ready(self, token: str, limit_s: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"bench API server exited with {self.proc.returncode}")
            try:
                answer = httpx.get(f"http://127.0.0.1:{self.port}/readyz", timeout=2)
                if answer.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError("bench API server did not get ready")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# ---------------------------------------------------------------- load


@dataclass
class LoadResult:
    name: str
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    body_bytes: int


_WRK_LATENCY = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.M)


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


# A new offset per request (full pages only): each query string differs, so the page cache (256 pages) rarely
# answers.
_WRK_VARY = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", wrk.path .. "&offset=" .. ((counter * 7919) % OFFSETS))
end
"""


def _wrk(url: str, token: str | None, connections: int, seconds: int, vary: int = 0) -> tuple[float, float, float, int]:
    argv = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if vary:
        script = Path(tempfile.mkdtemp(prefix="mp-wrk-")) / "vary.lua"
        script.write_text(_WRK_VARY.replace("OFFSETS", str(vary)))
        argv[1:1] = ["-s", str(script)]
    if token:
        argv[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=seconds + 60).stdout  # noqa: S603
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {p: _ms(v, u) for p, v, u in _WRK_LATENCY.findall(out)}
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(x) for x in socket_errors.groups())
    return rate, latency["50"], latency["99"], failed


_PY_LOAD = """
import asyncio, sys, time, httpx
url, token, connections, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
lat, errors = [], 0
async def worker(client, stop_at):
    global errors
    while time.perf_counter() < stop_at:
        t = time.perf_counter()
        r = await client.get(url)
        lat.append(time.perf_counter() - t)
        errors += r.status_code != 200
async def main():
    headers = {"Authorization": "Bearer " + token} if token != "-" else {}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        start = time.perf_counter(); stop_at = start + seconds
        await asyncio.gather(*(worker(client, stop_at) for _ in range(connections)))
        took = time.perf_counter() - start
    lat.sort()
    print(len(lat) / took, lat[len(lat) // 2] * 1000, lat[int(len(lat) * 0.99)] * 1000, errors)
asyncio.run(main())
"""


def _python_load(url: str, token: str | None, connections: int, seconds: int) -> tuple[float, float, float, int]:
    out = subprocess.run(  # noqa: S603 - this interpreter running the load script above
        [sys.executable, "-c", _PY_LOAD, url, token or "-", str(connections), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
        timeout=seconds + 120,
    ).stdout
    rate, p50, p99, errors = out.split()
    return float(rate), float(p50), float(p99), int(errors)


def _load(
    name: str, url: str, token: str | None, connections: int, seconds: int, body: int, vary: int = 0
) -> LoadResult:
    if shutil.which("wrk"):
        rate, p50, p99, errors = _wrk(url, token, connections, seconds, vary)
    else:  # the Python load repeats one query (cached answers only)
        rate, p50, p99, errors = _python_load(url, token, connections, seconds)
    return LoadResult(name, rate, p50, p99, errors, body)


# ---------------------------------------------------------------- stream latency

_SSE_CLIENTS = """
import asyncio, json, sys, time
port, token, clients, expected = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
latencies, connected = [], 0
async def client(ready):
    global connected
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET /api/v1/stream?kind=alert HTTP/1.1\\r\\nHost: x\\r\\nAuthorization: Bearer " + token +
                  "\\r\\nAccept: text/event-stream\\r\\n\\r\\n").encode())
    await writer.drain()
    seen = 0
    while seen < expected:
        line = await reader.readline()
        if not line:
            break
        if line.startswith(b"data: ") or b'"bench_sent_us"' in line:
            start = line.find(b"{")
            if start < 0:
                continue
            try:
                doc = json.loads(line[start:].split(b"\\r\\n")[0])
            except ValueError:
                continue
            sent = doc.get("annotations", {}).get("bench_sent_us")
            if sent:
                latencies.append(time.time_ns() / 1000 - int(sent))
                seen += 1
        elif line.startswith(b": connected"):
            connected += 1
            if connected == clients:
                ready.set()
    writer.close()
async def main():
    ready = asyncio.Event()
    tasks = [asyncio.create_task(client(ready)) for _ in range(clients)]
    await asyncio.wait_for(ready.wait(), 300)
    print("READY", flush=True)
    await asyncio.wait_for(asyncio.gather(*tasks), 600)
    print(json.dumps(latencies), flush=True)
asyncio.run(main())
"""


async def _stream_latency(settings: Settings, token: str, port: int, subscribers: int, records: int) -> list[float]:
    from pipeline.contracts import encode
    from pipeline.contracts.topics import ALERTS
    from pipeline.kafka import make_producer

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _SSE_CLIENTS, str(port), token, str(subscribers), str(records),
        stdout=asyncio.subprocess.PIPE, limit=64 * 1024 * 1024,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        line = await asyncio.wait_for(proc.stdout.readline(), 300)
        if not line.startswith(b"READY"):
            raise RuntimeError("stream clients did not connect")
        producer = make_producer(settings.kafka, linger_ms=0)
        await producer.start()
        try:
            base = _alerts(records)
            for n, alert in enumerate(base):
                import msgspec

                stamped = msgspec.structs.replace(
                    alert,
                    annotations=alert.annotations | {SENT: str(time.time_ns() // 1000)},
                    version=10 + n,
                )
                await producer.send_and_wait(
                    settings.topic(ALERTS.name), encode(stamped), key=stamped.fingerprint.encode()
                )
                await asyncio.sleep(0.2)  # one change at a time: latency, not throughput
        finally:
            await producer.stop()
        out = await asyncio.wait_for(proc.stdout.readline(), 600)
        return [us / 1000 for us in json.loads(out)]
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


# ---------------------------------------------------------------- the bench


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


def run_bench(base: Settings, alerts: int, page: int, connections: int, seconds: int, subscribers: int) -> str:
    """The figures as text (``seconds`` 0 skips the HTTP runs, ``subscribers`` 0 the stream run)."""
    from pipeline.api.auth import mint

    secret = "bench-secret-" + os.urandom(16).hex()
    settings = base.model_copy(update={"api": ApiSettings(jwt_secret=secret)})  # type: ignore[arg-type]
    token = mint(settings.api, "bench", "viewer", 3600)
    path = f"/api/v1/alerts?venue=binance&venue=okx&venue=kraken&limit={page}"
    lines = [
        f"marketprism bench api: {time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime())}, {platform.node()}, "
        f"{os.cpu_count()} cores, {platform.python_version()}, load from "
        f"{'wrk (2 threads)' if shutil.which('wrk') else 'a Python httpx process'}",
        f"{alerts} current alerts; GET {path}; {connections} connections x {seconds} s; one uvicorn process",
    ]
    if seconds > 0:
        lines += _http_runs(settings, token, path, alerts, page, connections, seconds)
    if subscribers:
        latencies = asyncio.run(_stream_run(settings, token, subscribers))
        lines.append(
            f"record on ops.alerts.v1 -> SSE event, {subscribers} subscribers, {len(latencies)} deliveries: "
            f"p50 {_percentile(latencies, 0.5):.1f} ms, p99 {_percentile(latencies, 0.99):.1f} ms, "
            f"max {max(latencies):.1f} ms"
        )
    return "\n".join(lines)


def _http_runs(
    settings: Settings, token: str, path: str, alerts: int, page: int, connections: int, seconds: int
) -> list[str]:
    import httpx

    from pipeline.infra import free_port

    lines = []
    with tempfile.TemporaryDirectory(prefix="mp-bench-api-") as tmp:
        static = Path(tmp) / "static.json"
        local = settings.model_copy(update={"kafka": KafkaSettings(bootstrap_servers="127.0.0.1:9")})
        port = free_port()
        probe = _Server(local, port, alerts, read_topics=False, static=None)
        try:
            probe.wait_ready(token)
            body = httpx.get(f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {token}"}).content
        finally:
            probe.stop()
        offsets = max(1, json.loads(body)["total"] - page + 1)
        static.write_bytes(json.dumps({"padding": "x" * max(0, len(body) - 16)}).encode())
        port = free_port()
        server = _Server(local, port, alerts, read_topics=False, static=static)
        try:
            server.wait_ready(token)
            url = f"http://127.0.0.1:{port}"
            _load("warm-up", url + path, token, connections, 2, len(body))
            results = [
                _load("GET /api/v1/alerts, one query (cached)", url + path, token, connections, seconds, len(body)),
                _load(f"GET /api/v1/alerts, {offsets} offsets (rendered)", url + path, token, connections,
                      seconds, len(body), vary=offsets),
                _load("static JSON, same size, same auth", url + "/bench/static-auth", token, connections, seconds,
                      static.stat().st_size),
                _load("static JSON, same size, no auth", url + "/bench/static", None, connections, seconds,
                      static.stat().st_size),
            ]  # fmt: skip
        finally:
            server.stop()
    lines.append(f"{'run':<44} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'bytes':>7} {'vs static':>9}")
    baseline = results[2].requests_per_s
    for r in results:
        lines.append(
            f"{r.name:<44} {r.requests_per_s:>9,.0f} {r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.errors:>7} "
            f"{r.body_bytes:>7} {r.requests_per_s / baseline:>9.2f}"
        )
    return lines


async def _stream_run(settings: Settings, token: str, subscribers: int, records: int = 20) -> list[float]:
    from pipeline.infra import free_port
    from pipeline.infra.scratch import scratch_broker

    async with scratch_broker(settings, "bench-api") as (local, _work):
        port = free_port()
        server = _Server(local, port, 0, read_topics=True, static=None)
        try:
            await asyncio.to_thread(server.wait_ready, token)
            return await _stream_latency(local, token, port, subscribers, records)
        finally:
            server.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench.api")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--alerts", type=int, default=1000)
    serve.add_argument("--read-topics", action="store_true")
    serve.add_argument("--static")
    args = parser.parse_args(argv)
    _serve(args)


if __name__ == "__main__":
    main()
