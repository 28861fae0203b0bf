"""Simulator test helpers, as fixtures (the suite imports test modules in importlib mode).

``make_driver(scenario)``: an in-memory loop between the simulator (engine + venue protocols) and
the collectors' real venue modules: what the simulator server and the collector runtime do, minus
sockets and clocks. ``default_run``: the default scenario played once through it.

Each collector connection plan gets a simulated connection: the plan's URL path and query and its
subscribe frames go to the simulated venue, replies and subscribed frames go back to the venue
module, REST requests and resubscribe frames are answered at once, and a ``disconnect`` makes
every connection of the venue reconnect and resubscribe. Results are tallied per venue symbol.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

import pytest

from pipeline.collectors.base import ConnectionPlan, FrameError, FrameResult, SubscriptionError, Venue
from pipeline.collectors.venues import VENUES
from pipeline.contracts import Bbo, Record, Trade
from pipeline.simulator.base import Frame
from pipeline.simulator.engine import Engine
from pipeline.simulator.protocols import Connection, Protocol
from pipeline.simulator.scenario import Scenario, load_scenario


@dataclass
class Link:
    plan: ConnectionPlan
    conn: Connection


@dataclass
class Tally:
    records: list[Record] = field(default_factory=list)
    gaps: Counter[tuple[str, str]] = field(default_factory=Counter)
    resyncs: Counter[tuple[str, str]] = field(default_factory=Counter)
    checksum_failures: Counter[tuple[str, str]] = field(default_factory=Counter)
    frame_errors: Counter[str] = field(default_factory=Counter)
    subscription_errors: list[str] = field(default_factory=list)
    malformed_delivered: Counter[str] = field(default_factory=Counter)
    trades_delivered: dict[str, set[str]] = field(default_factory=dict)
    reconnects: Counter[str] = field(default_factory=Counter)

    def trade_ids(self, venue: str) -> set[str]:
        return {f"{r.raw_symbol}:{r.trade_id}" for r in self.records if isinstance(r, Trade) and r.exchange == venue}

    def last_bbo(self, venue: str, raw: str) -> Bbo | None:
        found = [r for r in self.records if isinstance(r, Bbo) and r.exchange == venue and r.raw_symbol == raw]
        return found[-1] if found else None


class Driver:
    def __init__(self, scenario: Scenario):
        self.engine = Engine(scenario)
        self.tally = Tally()
        self.venues: dict[str, Venue] = {v: VENUES[v](symbols) for v, symbols in scenario.symbols.items()}
        self.links: dict[str, list[Link]] = {v: [] for v in self.venues}
        self._ids = 0
        for venue, module in self.venues.items():
            self.tally.trades_delivered[venue] = set()
            for plan in module.plan():
                self.links[venue].append(self._connect(venue, plan))

    def proto(self, venue: str) -> Protocol:
        return self.engine.protocols[venue]

    def _connect(self, venue: str, plan: ConnectionPlan) -> Link:
        self._ids += 1
        url = urlsplit(plan.url)
        link = Link(plan, Connection(self._ids, path=url.path))
        requests = self.venues[venue].on_connect(plan)
        for text in self.proto(venue).open(link.conn, dict(parse_qsl(url.query)), self.engine.now_us):
            self._deliver(venue, link, text, None)
        for frame in plan.subscribe:
            self._send(venue, link, frame)
        self._results(venue, link, FrameResult(requests=requests), None)
        return link

    def _send(self, venue: str, link: Link, text: str) -> None:
        proto = self.proto(venue)
        for reply in proto.message(link.conn, text, self.engine.now_us):
            self._deliver(venue, link, proto.render(link.conn, None, reply), None)

    def _deliver(self, venue: str, link: Link, text: str, raw: str | None) -> None:
        try:
            result = self.venues[venue].on_frame(text, self.engine.now_us, link.plan)
        except SubscriptionError as exc:
            self.tally.subscription_errors.append(f"{venue}: {exc}")
            return
        except FrameError:
            self.tally.frame_errors[venue] += 1
            return
        self._results(venue, link, result, raw)

    def _results(self, venue: str, link: Link, result: FrameResult, raw: str | None) -> None:
        t = self.tally
        t.records.extend(result.records)
        where = (venue, raw or "?")
        t.gaps[where] += result.gaps
        t.resyncs[where] += result.resyncs
        t.checksum_failures[where] += result.checksum_failures
        for request in result.requests:
            status, body = self.proto(venue).rest(urlsplit(request.url).path, dict(request.params), self.engine.now_us)
            assert status == 200, body
            self._results(venue, link, self.venues[venue].on_rest(request, body.encode(), self.engine.now_us), raw)
        for frame in result.resubscribe:
            self._send(venue, link, frame)

    def dispatch(self, frame: Frame) -> None:
        venue = frame.venue
        if venue not in self.links:
            return
        if frame.kind == "disconnect":
            self.tally.reconnects[venue] += 1
            self.links[venue] = [self._connect(venue, link.plan) for link in self.links[venue]]
            return
        proto = self.proto(venue)
        raw = frame.key.partition("|")[2]
        for link in self.links[venue]:
            if frame.key not in link.conn.keys:
                continue
            if frame.kind == "skip":
                link.conn.seq += 1
                continue
            if frame.kind == "malformed":
                self.tally.malformed_delivered[venue] += 1
            if frame.trade_id is not None:
                self.tally.trades_delivered[venue].add(frame.trade_id)
            self._deliver(venue, link, proto.render(link.conn, frame.key, frame.text), raw)

    def run(self) -> Tally:
        for frame in self.engine.run():
            self.dispatch(frame)
        return self.tally


@pytest.fixture
def make_driver() -> type[Driver]:
    return Driver


@pytest.fixture(scope="session")
def default_run() -> tuple[Driver, Tally]:
    """The default scenario played once through every real venue module (shared by several tests)."""
    driver = Driver(load_scenario())
    return driver, driver.run()
