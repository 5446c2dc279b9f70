"""What PostgreSQL, Redis and the processes have done: counters read before and after.

A `Probe` reads them; the difference of two readings (`Delta`) is what happened in
between. PostgreSQL's statistics of a backend reach the shared counters when it goes
idle, at most once a second, or when it exits: a phase's processes are stopped
before its closing reading. The probe's own work is taken out: its transactions are
counted (one per reading, one per poll), and its Redis commands per reading are
measured once (`calibrate`: two readings with nothing in between).
"""

import re
import subprocess
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import asyncpg
import psutil
import redis

from cli.embedded import POSTGRES_BIN_PATH
from shared.audits.status import TERMINAL, sql_list
from shared.db import asyncpg_dsn


@dataclass(frozen=True)
class TableWrites:
    inserted: int = 0
    updated: int = 0
    hot_updated: int = 0
    deleted: int = 0

    def __sub__(self, other: "TableWrites") -> "TableWrites":
        return TableWrites(
            self.inserted - other.inserted,
            self.updated - other.updated,
            self.hot_updated - other.hot_updated,
            self.deleted - other.deleted,
        )

    @property
    def rows(self) -> int:
        return self.inserted + self.updated + self.deleted


@dataclass(frozen=True)
class Reading:
    xacts: int
    tables: dict[str, TableWrites]
    wal_lsn: str
    wal_records: int
    wal_fpi: int
    redis_calls: dict[str, int]
    redis_memory: int
    own_xacts: int  # the probe's transactions before this reading's own


@dataclass(frozen=True)
class Delta:
    """Between two readings, the probe's own work taken out."""

    xacts: int
    tables: dict[str, TableWrites]
    wal_bytes: int
    wal_records: int
    wal_fpi: int
    wal_by_kind: dict[str, "WalKind"] | None
    redis_calls: dict[str, int]
    redis_memory: int

    @property
    def rows(self) -> int:
        return sum(t.rows for t in self.tables.values())

    @property
    def redis_commands(self) -> int:
        return sum(self.redis_calls.values())


@dataclass(frozen=True)
class WalKind:
    """pg_waldump --stats: one resource manager's records, their bytes and page images'."""

    records: int
    record_bytes: int
    fpi_bytes: int


@dataclass
class Probe:
    database_url: str
    redis_url: str
    pg_wal: Path
    own_xacts: int = 0
    own_redis: Counter[str] = field(default_factory=Counter)

    async def calibrate(self) -> None:
        """What one reading costs Redis, as the next reading sees it."""
        first, second = await self.read(), await self.read()
        self.own_redis = Counter(second.redis_calls)
        self.own_redis.subtract(first.redis_calls)

    async def read(self) -> Reading:
        mark = self.own_xacts
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            async with connection.transaction():
                values = await self._read_postgres(connection)
        finally:
            await connection.close()
        self.own_xacts += 1
        return Reading(**values, **self._read_redis(), own_xacts=mark)

    async def _read_postgres(self, connection: asyncpg.Connection) -> dict[str, Any]:
        xacts = await connection.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database "
            "WHERE datname = current_database()"
        )
        tables = await connection.fetch(
            "SELECT relname, n_tup_ins, n_tup_upd, n_tup_hot_upd, n_tup_del "
            "FROM pg_stat_user_tables"
        )
        wal = await connection.fetchrow(
            "SELECT pg_current_wal_lsn()::text AS lsn, wal_records, wal_fpi FROM pg_stat_wal"
        )
        assert wal is not None
        return {
            "xacts": int(xacts),
            "tables": {r["relname"]: TableWrites(*map(int, list(r.values())[1:])) for r in tables},
            "wal_lsn": wal["lsn"],
            "wal_records": int(wal["wal_records"]),
            "wal_fpi": int(wal["wal_fpi"]),
        }

    def _read_redis(self) -> dict[str, Any]:
        client = redis.Redis.from_url(self.redis_url)
        try:
            stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
            memory = cast(dict[str, Any], client.info("memory"))
        finally:
            client.close()
        calls = {name.removeprefix("cmdstat_"): int(s["calls"]) for name, s in stats.items()}
        return {"redis_calls": calls, "redis_memory": int(memory["used_memory"])}

    async def finished(self) -> int:
        """Audits that have ended (a poll: one transaction, counted)."""
        connection = await asyncpg.connect(asyncpg_dsn(self.database_url))
        try:
            done: int = await connection.fetchval(
                f"SELECT count(*) FROM audit WHERE status IN {sql_list(TERMINAL)}"
            )
        finally:
            await connection.close()
        self.own_xacts += 1
        return done

    def delta(self, before: Reading, after: Reading) -> Delta:
        """`after - before`, less the probe's own work."""
        calls = Counter(after.redis_calls)
        calls.subtract(before.redis_calls)
        calls.subtract(self.own_redis)
        return Delta(
            xacts=after.xacts - before.xacts - (after.own_xacts - before.own_xacts),
            tables={
                name: writes - before.tables.get(name, TableWrites())
                for name, writes in after.tables.items()
            },
            wal_bytes=lsn_bytes(after.wal_lsn) - lsn_bytes(before.wal_lsn),
            wal_records=after.wal_records - before.wal_records,
            wal_fpi=after.wal_fpi - before.wal_fpi,
            wal_by_kind=wal_by_kind(self.pg_wal, before.wal_lsn, after.wal_lsn),
            redis_calls={name: n for name, n in calls.items() if n > 0},
            redis_memory=after.redis_memory - before.redis_memory,
        )


def lsn_bytes(lsn: str) -> int:
    """A WAL position `X/Y` as a byte offset: the difference of two is pg_wal_lsn_diff's."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) + int(low, 16)


_WALDUMP_ROW = re.compile(
    r"^(?P<kind>\w+)\s+(?P<n>\d+)\s+\(\s*[\d.]+\)\s+(?P<rec>\d+)\s+\(\s*[\d.]+\)"
    r"\s+(?P<fpi>\d+)\s+\(\s*[\d.]+\)",
    re.M,
)


def wal_by_kind(pg_wal: Path, start: str, end: str) -> dict[str, WalKind] | None:
    """`pg_waldump --stats` between two positions; None when the segments are gone."""
    argv = [str(POSTGRES_BIN_PATH / "pg_waldump"), "--stats", "-p", str(pg_wal)]
    done = subprocess.run([*argv, "-s", start, "-e", end], capture_output=True, text=True)
    if done.returncode != 0:
        return None
    kinds = {
        m["kind"]: WalKind(int(m["n"]), int(m["rec"]), int(m["fpi"]))
        for m in _WALDUMP_ROW.finditer(done.stdout)
    }
    return {kind: k for kind, k in kinds.items() if k.records}


# --- CPU --------------------------------------------------------------------------------------


def process_cpu_s(pid: int) -> float:
    """User + system seconds of a process and of the children it has reaped."""
    times = psutil.Process(pid).cpu_times()
    return times.user + times.system + times.children_user + times.children_system


def postgres_cpu_s(postmaster: int) -> float:
    """The whole server: the postmaster, its live children (backends, autovacuum, WAL
    writer, checkpointer), and the ones that exited (reaped: the postmaster's children
    times)."""
    total = process_cpu_s(postmaster)
    for child in psutil.Process(postmaster).children():
        try:
            total += process_cpu_s(child.pid)
        except psutil.NoSuchProcess:
            continue
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) clock ticks of every core since boot, from /proc/stat."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    total = sum(fields[:8])  # guest time is counted in user already
    return total - idle, total
