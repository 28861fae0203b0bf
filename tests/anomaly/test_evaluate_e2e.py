"""End to end through the real broker: labelled incidents (a frozen price, a spike, a diverging venue) in bars and
reference prices on the topics, the real ``marketprism anomaly`` worker scoring them, and ``marketprism anomaly
evaluate`` reading ``ops.anomalies.v1`` and the worker's changelogs to score recall, latency and false anomalies."""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import msgspec

from pipeline.contracts import Bar, encode, market_key
from pipeline.contracts.records import ReferencePrice
from pipeline.kafka.clients import make_consumer, make_producer
from pipeline.settings import Settings
from tests.anomaly.helpers import ROOT, T0, bars, collect, worker_process

WORKER_ARGS = ("--warmup", "50", "--checkpoint-every", "10", "--checkpoint-interval", "3600", "--health-interval", "60")
S = 1_000_000
N = 200
FROZEN = range(150, 166)  # binance BTC-USDT trades at one price for 16 s
SPIKE = 180  # okx ETH-USDT: +3% for one bar
DIVERGE = 170  # coinbase BTC-USD drifts 10 bps per second away from the others


def frozen_bars() -> list[Bar]:
    out = bars("binance", "BTC-USDT", N, seed=21)
    still = out[FROZEN[0] - 1].close
    for i in FROZEN:
        out[i] = msgspec.structs.replace(out[i], open=still, high=still, low=still, close=still, vwap=still)
    return out


def references() -> list[ReferencePrice]:
    rng = random.Random(22)
    out = []
    for i in range(N):
        coinbase = rng.gauss(0.0, 1.0) + (10.0 * (i - DIVERGE + 1) if i >= DIVERGE else 0.0)
        out.append(ReferencePrice(
            asset="BTC-USD", ts_event=T0 + (i + 1) * S, price="30000.00", venues=2,  # type: ignore[arg-type]
            mids={"binance:BTC-USDT": "30000.00", "coinbase:BTC-USD": "30000.00"},  # type: ignore[dict-item]
            divergence_bps={"binance:BTC-USDT": round(rng.gauss(0.0, 1.0), 4), "coinbase:BTC-USD": round(coinbase, 4)},
        ))  # fmt: skip
    return out


def label(ident: str, kind: str, venue: str, symbol: str, start_s: int, end_s: int) -> str:
    return json.dumps({
        "detail": {}, "end_us": T0 + end_s * S, "id": ident, "kind": kind, "params": {}, "raw_symbol": None,
        "start_us": T0 + start_s * S, "symbol": symbol, "venue": venue,
    })  # fmt: skip


async def produce(settings: Settings, bar_lists: list[list[Bar]], refs: list[ReferencePrice]) -> None:
    producer = make_producer(settings.kafka)
    await producer.start()
    try:
        for i in range(N):
            for series in bar_lists:
                bar = series[i]
                key = market_key(bar.exchange, bar.symbol)
                await producer.send(settings.topic("md.bars.1s.v1"), encode(bar), key=key)
            await producer.send(settings.topic("md.reference.v1"), encode(refs[i]), key=refs[i].asset.encode())
        await producer.flush()
    finally:
        await producer.stop()


async def test_evaluate_scores_the_real_worker_on_labelled_incidents(topics: Settings, tmp_path: Path) -> None:
    labels = tmp_path / "labels.jsonl"
    labels.write_text("\n".join([
        label("frozen", "frozen_price", "binance", "BTC-USDT", FROZEN[0], FROZEN[-1] + 1),
        label("diverge", "venue_divergence", "coinbase", "BTC-USD", DIVERGE, N),
        label("spike", "price_spike", "okx", "ETH-USDT", SPIKE, SPIKE + 1),
    ]) + "\n")  # fmt: skip
    consumer = make_consumer(topics.kafka, topics.topic("ops.anomalies.v1"), group_id=None)
    await consumer.start()
    try:
        with worker_process(topics, tmp_path / "worker.log", *WORKER_ARGS):
            await produce(
                topics, [frozen_bars(), bars("okx", "ETH-USDT", N, seed=23, spikes=frozenset({SPIKE}))], references()
            )
            wanted = {"frozen_bars", "divergence_bps", "log_return"}
            found = await collect(consumer, lambda seen: wanted <= {a.metric for a in seen}, timeout_s=90)
    finally:
        await consumer.stop()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert {"frozen_bars", "divergence_bps", "log_return"} <= {a.metric for a in found}, log[-3000:]
    env = os.environ | {
        "MARKETPRISM_KAFKA__BOOTSTRAP_SERVERS": topics.kafka.bootstrap_servers,
        "MARKETPRISM_TOPIC_PREFIX": topics.topic_prefix,
    }
    out = tmp_path / "evaluation.json"
    exe = Path(sys.executable).parent / "marketprism"
    done = await asyncio.to_thread(
        subprocess.run,
        [str(exe), "anomaly", "evaluate", "--labels", str(labels), "--json", str(out), "--lead", "150",
         "--dump", str(tmp_path / "dump")],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    by_id = {r["id"]: r for r in result["incidents"]}
    assert result["recall"] == {"detected": 3, "incidents": 3, "ratio": 1.0}, result
    assert by_id["frozen"]["series_id"] == "binance:BTC-USDT:1s:frozen_bars"
    assert by_id["diverge"]["series_id"] == "coinbase:BTC-USD:divergence_bps"
    assert by_id["spike"]["series_id"] == "okx:ETH-USDT:1s:log_return"
    assert by_id["spike"]["latency_s"] == 1.0  # the spike bar ends one second after its start
    assert all(0 <= r["latency_s"] <= 5 for r in result["incidents"]), result["incidents"]
    # every series the worker keeps: 5 per bar market (volume, trade count, return, spread, frozen) + 2 divergences
    assert result["series"] == 12, result["series"]
    assert "recall within 5 s: 3/3 market incidents" in done.stdout
    dumped = (tmp_path / "dump" / "anomalies.jsonl").read_text().splitlines()
    assert len(dumped) >= result["anomalies"] >= 3
