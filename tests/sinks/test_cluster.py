"""Clustered storage: ``marketprism db migrate --cluster NAME`` (ON CLUSTER DDL, Replicated*MergeTree local
tables, Distributed tables over them).

What runs where:
- the generated DDL of every table, checked statement by statement, and parsed by the modern engine
  (chdb's ``EXPLAIN AST``; chdb has no ZooKeeper/Keeper and no cluster, so it cannot create them);
- a real two-node cluster (1 shard x 2 replicas) of Debian's clickhouse-server with Debian's ZooKeeper on
  loopback: Debian ships ClickHouse 18.16, which predates ClickHouse Keeper (21.8) and the modern column
  types (``DateTime64``, ``LowCardinality`` by default, TTL, skipping indexes), so ``migrate(..., cluster)``
  runs for the trades table through :class:`OldDialect`, which rewrites only those column types and
  clauses; the ON CLUSTER statements, the replicated engines and their paths, the Distributed engine and
  its sharding key run as generated. The sink then writes through the Distributed table from the real
  broker, and both replicas hold every row.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import socket
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import msgspec
import pytest
from clickhouse_driver import Client
from sinkhelpers import produce, variations, wait_for

from pipeline.contracts import Trade, load_registry
from pipeline.infra import ManagedProcess, clickhouse_server_binary, clickhouse_service, free_port
from pipeline.settings import Settings
from pipeline.sinks.chdb_backend import ChdbSink
from pipeline.sinks.driver_backend import ServerSink
from pipeline.sinks.migrations import (
    MIGRATIONS,
    AddColumns,
    CreateTopicTables,
    MigrationError,
    applied_versions,
    migrate,
    stored_names,
)
from pipeline.sinks.runner import RunnerOptions, SinkRunner
from pipeline.sinks.schema import table_for
from tests.conftest import unavailable

CLUSTER = "mp"
ZOOKEEPER_JAR = Path("/usr/share/java/zookeeper.jar")
JAVA = "/usr/bin/java"


def _all_tables() -> list[Any]:
    registry = load_registry()
    return [table_for(t) for t in registry if t.name in stored_names(registry)]


def test_cluster_ddl_per_table() -> None:
    """Every stored topic: a replicated local table with exactly the single-node columns, ordering,
    partitioning and TTL, and a Distributed table over it under the topic's table name."""
    tables = _all_tables()
    assert tables
    for table in tables:
        single = table.create_sql("md")
        local, distributed = table.cluster_sql("md", CLUSTER)
        assert local.startswith(f"CREATE TABLE IF NOT EXISTS `md`.`{table.name}_local` ON CLUSTER `{CLUSTER}` (")
        assert (
            f"ENGINE = ReplicatedMergeTree('/clickhouse/tables/{{shard}}/md/{table.name}_local', '{{replica}}')"
        ) in local
        # same body but for the name, the engine and the deduplication setting
        body = single.split(" (", 1)[1].replace("ENGINE = MergeTree\n", "")
        local_body = re.sub(r"ENGINE = Replicated.*\n", "", local.split(" (", 1)[1])
        assert local_body.replace("replicated_deduplication_window", "non_replicated_deduplication_window") == body
        assert "Decimal(38, 18)" in body or not any(c.type.startswith("Decimal") for c in table.columns)
        assert distributed == (
            f"CREATE TABLE IF NOT EXISTS `md`.`{table.name}` ON CLUSTER `{CLUSTER}` AS `md`.`{table.name}_local`\n"
            f"ENGINE = Distributed(`{CLUSTER}`, `md`, `{table.name}_local`, {table.sharding_key()})"
        )
        if {"exchange", "symbol"} <= set(table.column_names):
            assert table.sharding_key() == "cityHash64(`exchange`, `symbol`)"
        else:
            assert table.sharding_key().startswith("cityHash64(`")


def test_cluster_ddl_parses_on_the_modern_engine() -> None:
    """chdb (a current ClickHouse) parses every ON CLUSTER statement the migrations emit."""
    import chdb

    registry = load_registry()
    statements = [
        sql
        for m in MIGRATIONS
        if isinstance(m, (CreateTopicTables, AddColumns))
        for sql in m.statements(registry, "md", CLUSTER)
    ]
    assert len(statements) >= 2 * len(_all_tables())
    conn = chdb.connect(":memory:")
    try:
        for sql in statements:
            ast = str(conn.query(f"EXPLAIN AST {sql}", "CSV"))
            assert ("CreateQuery" in ast or "AlterQuery" in ast) and "ON CLUSTER" not in ast  # parsed
    finally:
        conn.close()


def test_single_node_ddl_has_no_cluster_parts() -> None:
    for table in _all_tables():
        sql = table.create_sql("md")
        assert "ON CLUSTER" not in sql and "Replicated" not in sql and "Distributed" not in sql
        assert "ENGINE = MergeTree\n" in sql


async def test_cluster_migrate_refuses_a_single_node_database(tmp_path: Path) -> None:
    """A database a single-node migrate made (chdb here) is refused before any ON CLUSTER statement."""
    sink = ChdbSink(str(tmp_path / "db"), load_registry(), run_migrations=False)
    await sink.setup()
    try:
        await migrate(sink, load_registry())
        with pytest.raises(MigrationError, match=r"single-node tables \[.*'trades'"):
            await migrate(sink, load_registry(), CLUSTER)
    finally:
        await sink.close()


# -- the real cluster ---------------------------------------------------------------------------------


@dataclass
class Node:
    host: str
    tcp_port: int
    service: ManagedProcess
    shards: int

    def client(self, database: str = "default") -> Client:
        return Client(host=self.host, port=self.tcp_port, database=database)


def _cluster_config(conf_dir: Path, zk_port: int, ports: list[int], index: int, shards: int) -> Path:
    """A copy of Debian's config.xml and users.xml plus a config.d naming the cluster, the ZooKeeper and
    this node's macros; the default profile inserts into Distributed tables synchronously."""
    conf_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy("/etc/clickhouse-server/config.xml", conf_dir / "config.xml")
    users = Path("/etc/clickhouse-server/users.xml").read_text()
    users = users.replace("<default>", "<default>\n<insert_distributed_sync>1</insert_distributed_sync>", 1)
    (conf_dir / "users.xml").write_text(users)
    replicas = [f"<replica><host>127.0.0.1</host><port>{p}</port></replica>" for p in ports]
    per_shard = [replicas] if shards == 1 else [[r] for r in replicas]
    layout = "".join(
        f"<shard><internal_replication>true</internal_replication>{''.join(rs)}</shard>" for rs in per_shard
    )
    (conf_dir / "config.d").mkdir(exist_ok=True)
    (conf_dir / "config.d" / "cluster.xml").write_text(
        f"""<?xml version="1.0"?>
<yandex>
  <remote_servers>
    <{CLUSTER}>{layout}</{CLUSTER}>
  </remote_servers>
  <zookeeper><node><host>127.0.0.1</host><port>{zk_port}</port></node></zookeeper>
  <macros><shard>0{1 if shards == 1 else index + 1}</shard><replica>r{index}</replica></macros>
  <interserver_http_host>127.0.0.1</interserver_http_host>
</yandex>
"""
    )
    return conf_dir / "config.xml"


def _zookeeper(state: Path) -> ManagedProcess:
    """Debian's ZooKeeper, standalone, on a free loopback port (no admin server)."""
    port = free_port()
    data = state / "zookeeper"
    data.mkdir(parents=True, exist_ok=True)
    (data / "zoo.cfg").write_text(
        f"tickTime=2000\ndataDir={data}\nclientPort={port}\nclientPortAddress=127.0.0.1\nadmin.enableServer=false\n"
    )
    argv = (
        JAVA,
        "-Xmx256m",
        "-cp",
        f"/etc/zookeeper/conf:{ZOOKEEPER_JAR}:/usr/share/java/slf4j-simple.jar",
        "org.apache.zookeeper.server.ZooKeeperServerMain",
        str(data / "zoo.cfg"),
    )
    return ManagedProcess("zookeeper", argv, state, "127.0.0.1", port, cwd=data, die_with_parent=True)


def _zookeeper_serves(port: int) -> bool:
    """Whether ZooKeeper answers a session handshake (its port opens before its database is loaded, and
    clickhouse-server 18.16 crashes when its first connection attempts fail)."""
    body = struct.pack(">iqiq", 0, 0, 30000, 0) + struct.pack(">i", 16) + bytes(16)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(struct.pack(">i", len(body)) + body)
            return len(sock.recv(64)) >= 20
    except OSError:
        return False


@pytest.fixture(scope="module", params=[1, 2], ids=["1shard-2replicas", "2shards-1replica"])
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[list[Node]]:
    """ZooKeeper and two clickhouse-server processes forming cluster ``mp``: 1 shard x 2 replicas, or
    2 shards x 1 replica."""
    if clickhouse_server_binary() is None:
        unavailable("clickhouse-server is not installed (make test installs it with apt where it can)")
    if not ZOOKEEPER_JAR.exists() or not Path(JAVA).exists():
        unavailable("the cluster test needs Debian's zookeeper package (apt-get install zookeeper)")
    state = tmp_path_factory.mktemp("cluster")
    zk = _zookeeper(state)
    started: list[ManagedProcess] = []
    try:
        zk.start(timeout=90)
        started.append(zk)
        if not _wait(lambda: _zookeeper_serves(zk.port), limit_s=90):
            unavailable(f"ZooKeeper did not serve sessions (see {zk.log_file})")
        ports = [free_port(), free_port()]
        nodes = []
        for i, port in enumerate(ports):
            base = clickhouse_service(state / f"node{i}", tcp_port=port, http_port=free_port(), die_with_parent=True)
            config = _cluster_config(state / f"node{i}" / "conf", zk.port, ports, i, request.param)
            argv = (base.argv[0], f"--config-file={config}", *base.argv[2:])
            service = ManagedProcess(f"clickhouse-{i}", argv, base.state_dir, base.host, port, base.cwd, True)
            service.start(timeout=90)
            started.append(service)
            nodes.append(Node(base.host, port, service, request.param))
        yield nodes
    finally:
        for service in reversed(started):
            service.stop()


def _old_dialect(sql: str) -> str:
    """The generator's DDL in ClickHouse 18.16's dialect: only column types and clauses it lacks change."""
    sql = sql.replace("DateTime64(6, 'UTC') DEFAULT now64(6)", "DateTime DEFAULT now()")
    sql = sql.replace("DateTime64(6, 'UTC')", "DateTime")
    sql = re.sub(r"LowCardinality\((\w+)\)", r"\1", sql)
    sql = re.sub(r",\n  INDEX [^\n]*", "", sql)
    sql = re.sub(r"\nTTL [^\n]*", "", sql)
    return re.sub(r"\nSETTINGS [^\n]*", "", sql)


@dataclass
class OldDialect:
    """The migrations' :class:`~pipeline.sinks.migrations.Database` on one node, speaking 18.16's dialect."""

    client: Client
    database: str

    async def execute(self, sql: str) -> None:
        # 18.16 waits for data blocks after any INSERT, so the migrations' one-row INSERT ... VALUES (n, 's')
        # goes as a parameterised insert (newer servers take the inline row as it is)
        insert = re.fullmatch(r"(INSERT INTO .* VALUES) \((\d+), '(.*)'\)", sql, re.DOTALL)
        if insert:
            row = (int(insert[2]), insert[3].replace("''", "'"))
            await asyncio.to_thread(self.client.execute, insert[1], [row])
            return
        await asyncio.to_thread(self.client.execute, _old_dialect(sql))

    async def fetch(self, sql: str) -> list[tuple[object, ...]]:
        return list(await asyncio.to_thread(self.client.execute, sql))


async def _has_versions(db: OldDialect, versions: set[int]) -> bool:
    return await applied_versions(db) == versions


def _wait(predicate: Any, limit_s: float = 120.0) -> bool:
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()


@pytest.mark.clickhouse_server
async def test_cluster_tables_replicate_and_the_sink_writes_through_distributed(
    cluster: list[Node], topics: Settings
) -> None:
    db = f"cl_{uuid.uuid4().hex[:8]}"
    registry = load_registry()
    only_trades = dataclasses.replace(registry, topics=(registry.get("md.trades.v1"),))
    first = cluster[0]
    applied = await migrate(OldDialect(first.client(), db), only_trades, CLUSTER)
    assert [int(line.split(":")[0]) for line in applied] == sorted(m.version for m in MIGRATIONS)
    for node in cluster:  # ON CLUSTER created both tables on both nodes; the record of versions is shared
        c = node.client()
        try:
            engines = dict(c.execute(f"SELECT name, engine FROM system.tables WHERE database = '{db}'"))
            assert engines == {
                "trades_local": "ReplicatedMergeTree",
                "trades": "Distributed",
                "_schema_migrations": "ReplicatedMergeTree",
            }
            view = OldDialect(c, db)
            assert await wait_for(lambda view=view: _has_versions(view, {m.version for m in MIGRATIONS}))
            assert await migrate(view, only_trades, CLUSTER) == []  # nothing pending, from either node
        finally:
            c.disconnect()

    # 12 markets, so that two shards each get some
    records = [
        msgspec.structs.replace(t, symbol=f"M{i % 12}-USDT", raw_symbol=f"M{i % 12}USDT")
        for i, t in enumerate(variations(Trade, 2000))
    ]
    url = f"clickhouse://default:@{first.host}:{first.tcp_port}/{db}"
    sink = ServerSink(url, load_registry(), topics.topic_prefix, run_migrations=False, retry_window_s=30)
    runner = SinkRunner(
        topics,
        sink,
        [topics.topic("md.trades.v1")],
        RunnerOptions(group_id=f"{topics.topic_prefix}sink", batch_rows=300, batch_interval_s=0.2),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))

    async def written() -> bool:
        if task.done():
            task.result()
        return sink.rows_written >= len(records)

    try:
        await produce(topics, {"md.trades.v1": records})
        assert await wait_for(written, limit_s=180)
    finally:
        stop.set()
        await task

    expected_prices = Counter(Decimal(t.price) for t in records)
    markets_per_node: list[set[tuple[str, str]]] = []
    local_counts: list[int] = []
    for node in cluster:  # all rows readable through the Distributed table of either node
        c = node.client(db)
        try:
            assert c.execute("SELECT count(), uniqExact(_partition, _offset) FROM trades") == [
                (len(records), len(records))
            ]
            assert c.execute("SELECT toTypeName(price) FROM trades LIMIT 1") == [("Decimal(38, 18)",)]
            prices = Counter(Decimal(p) for (p,) in c.execute("SELECT toString(price) FROM trades"))
            assert prices == expected_prices
            if node.shards == 1:  # every replica holds every row (replication)
                assert _wait(lambda c=c: c.execute("SELECT count() FROM trades_local") == [(len(records),)])
            local_counts.append(c.execute("SELECT count() FROM trades_local")[0][0])
            markets_per_node.append(set(c.execute("SELECT DISTINCT exchange, symbol FROM trades_local")))
        finally:
            c.disconnect()
    if first.shards == 2:  # each shard holds its markets' rows, each market on one shard only
        assert sum(local_counts) == len(records) and all(local_counts)
        assert not markets_per_node[0] & markets_per_node[1]
        assert len(markets_per_node[0] | markets_per_node[1]) == 12
    c = first.client()
    try:
        c.execute(f"DROP DATABASE `{db}` ON CLUSTER `{CLUSTER}`")
    finally:
        c.disconnect()
