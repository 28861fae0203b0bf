"""A full producer queue never leaves a published book silently wrong: the dropped book change marks the book
broken, its deltas are held back, and a snapshot of the collector's own book (exact: it applied the change it could
not publish) repairs it; dropped records are counted and reported as gaps in the feed metrics."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.bench.venues import plan_for
from pipeline.collectors.book import L2Book
from pipeline.collectors.capture import read_capture
from pipeline.collectors.metrics import BOOK_LOCAL_RESYNCS, BOOKS_BROKEN, OVERFLOW
from pipeline.collectors.output import Output
from pipeline.collectors.runtime import VenueRuntime
from pipeline.collectors.venues import Okx
from pipeline.contracts import BookUpdate, decode
from pipeline.kafka.clients import make_record_producer
from pipeline.settings import KafkaSettings

pytestmark = pytest.mark.shared

SYMBOLS = ["BTC-USD-220527", "UNI-USD-PERP", "BTC-USDT"]


class Consumer:
    """A downstream consumer rebuilding every book from what reached ``md.book.v1`` (snapshot replaces, delta
    applies), as a Kafka consumer of the topic would."""

    def __init__(self) -> None:
        self.books: dict[str, L2Book] = {}
        self.resync_snapshots = 0

    def take(self, output: Output) -> None:
        """Everything queued so far, as the pump would hand it to the broker."""
        while output.pending:
            item = output._queue.get_nowait()
            output._queue.task_done()
            if isinstance(item, tuple) and item[0] == "md.book.v1":
                update = decode(BookUpdate, item[2])
                book = self.books.setdefault(update.symbol, L2Book())
                if update.kind == "snapshot":
                    book.replace(update.bids, update.asks)
                    self.resync_snapshots += update.resync
                else:
                    book.apply(update.bids, update.asks)


async def test_dropped_book_changes_break_the_book_until_a_snapshot_repairs_it(replay_dir: Path) -> None:
    lines = [line for line in read_capture(replay_dir / "okx.txt") if line.kind in ("connect", "ws_in")]
    venue = Okx(SYMBOLS)
    output = Output(make_record_producer(KafkaSettings(bootstrap_servers="127.0.0.1:9")), maxsize=20)
    runtime = VenueRuntime(venue, output)
    consumer = Consumer()
    broken_before = BOOKS_BROKEN.labels("okx")._value.get()
    repaired_before = BOOK_LOCAL_RESYNCS.labels("okx")._value.get()
    dropped_before = OVERFLOW.labels("book")._value.get() + OVERFLOW.labels("book_suppressed")._value.get()
    plan = None
    for n, line in enumerate(lines):
        if line.kind == "connect":
            plan = plan_for(line.endpoint, 0)
            runtime.connected(plan)
            continue
        assert plan is not None
        runtime.frame(plan, line.payload, line.ts_recv_us)
        # the broker is slow for the first half of the capture (the pump takes the queue only every 15 frames),
        # then keeps up: the queue overflows, and books break and get repaired
        if n > len(lines) // 2 or n % 15 == 0:
            consumer.take(output)
    consumer.take(output)
    dropped = OVERFLOW.labels("book")._value.get() + OVERFLOW.labels("book_suppressed")._value.get() - dropped_before
    assert dropped > 0 and BOOKS_BROKEN.labels("okx")._value.get() > broken_before
    assert BOOK_LOCAL_RESYNCS.labels("okx")._value.get() > repaired_before and consumer.resync_snapshots > 0
    assert output.broken_books == set()  # each broken book was repaired by a later frame of its market
    own = {state.symbol: state.book.levels() for state in venue._books.values() if state.synced}
    assert own and {symbol: consumer.books[symbol].levels() for symbol in own} == own  # never silently wrong
    flushed = runtime.stats.flush(lines[-1].ts_recv_us, 1_000_000)
    assert sum(m.gaps for m in flushed) >= dropped  # every record not published is a gap of its stream
    assert sum(m.resyncs for m in flushed) >= consumer.resync_snapshots
