"""Figure 13: what one audit costs PostgreSQL, Redis and the CPUs, and how workers scale.

`docs/CAPACITY.md` builds its model on these figures. The run has PostgreSQL and Redis
to itself (`bench/private_servers.py`), so that server-wide counters are its own; the
API (uvicorn, as the Procfile's `web`), the workers (`python -m worker`) and the
simulator are real processes. In order:

1. Idle: one worker with nothing to do, `idle_s`: what an idle fleet costs per worker.
2. Submit: `singles` audits of 1 KB, one `POST /api/v1/audits` each (8 at a time),
   no worker running; then the API is stopped (its backends exit, which flushes their
   statistics) and the counters read. Redis's used_memory with those jobs queued,
   against before: memory per queued job.
3. Run: one worker drains them against the simulator; stopped, counters read. Then
   the `audit` table's bytes per row, as the run left it and compacted (VACUUM FULL).
4. Scaling: for 1, 2 and 4 worker processes (WORKER_CONCURRENCY=`concurrency` each, a
   simulator answering in `latency_ms`: I/O bound, ideal = workers * concurrency /
   latency), a backlog of `backlog_s` of ideal work queued through `POST /batches`
   first, then drained. Throughput is the steady rate (`common.steady_rate`); CPU is
   read from /proc for each part (workers, the API, the simulator, PostgreSQL's whole
   process tree, redis-server) and for the machine; PostgreSQL's active backends are
   sampled twice a second from pg_stat_activity (what they wait on, or CPU).

One CHECKPOINT is forced before the submit phase, so that no timed checkpoint falls
inside phases 2-3 (checkpoint_timeout is 5 min) and the full-page images counted are
those of pages first touched since it.
"""

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import asyncpg
import httpx
import redis

from bench import audits
from bench.capacity_report import section
from bench.common import (
    Proc,
    Run,
    Stack,
    auditq_env,
    procfile_worker,
    scratch_database,
    stack,
    start_api,
    start_simulator,
    start_worker,
    steady_rate,
)
from bench.counters import Delta, Probe, machine_jiffies, postgres_cpu_s, process_cpu_s
from bench.private_servers import PrivateServers, private_servers
from bench.results import Section
from bench.workload import audit_body, audit_json
from shared.db import asyncpg_dsn

QUEUE = "auditq:capacity"
SUBMITTERS = 8


@dataclass(frozen=True)
class Sizes:
    singles: int
    run_concurrency: int
    run_latency_ms: str
    idle_s: float
    workers: tuple[int, ...]
    concurrency: int
    latency_ms: int
    backlog_s: float

    def ideal(self, workers: int) -> float:
        return workers * self.concurrency * 1000 / self.latency_ms


def sizes(quick: bool) -> Sizes:
    if quick:
        return Sizes(60, 10, "20", 1.0, (1, 2), 5, 50, 1.0)
    return Sizes(3000, 50, "20", 15.0, (1, 2, 4), 20, 200, 15.0)


# --- CPU of the parts -------------------------------------------------------------------------


@dataclass
class Parts:
    """The processes whose CPU is read: auditq's by name, and the two servers."""

    servers: PrivateServers
    procs: dict[str, list[Proc]]

    def cpu(self) -> "CpuReading":
        seconds = {
            name: sum(process_cpu_s(p.pid) for p in procs) for name, procs in self.procs.items()
        }
        seconds["postgres"] = postgres_cpu_s(self.servers.postgres_pid)
        seconds["redis"] = process_cpu_s(self.servers.redis_pid)
        busy, total = machine_jiffies()
        return CpuReading(time.monotonic(), seconds, busy, total)


@dataclass(frozen=True)
class CpuReading:
    at: float
    seconds: dict[str, float]
    busy: int
    total: int

    def since(self, before: "CpuReading") -> "CpuUse":
        return CpuUse(
            elapsed_s=self.at - before.at,
            seconds={k: v - before.seconds.get(k, 0.0) for k, v in self.seconds.items()},
            machine_busy=(self.busy - before.busy) / max(1, self.total - before.total),
        )


@dataclass(frozen=True)
class CpuUse:
    elapsed_s: float
    seconds: dict[str, float]
    machine_busy: float  # 0-1 of all cores

    def ms_per(self, part: str, count: int) -> float:
        return self.seconds.get(part, 0.0) * 1000 / max(1, count)

    def cores(self, part: str) -> float:
        return self.seconds.get(part, 0.0) / self.elapsed_s


# --- phases -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Phase:
    count: int  # audits (idle: 0)
    delta: Delta
    cpu: CpuUse
    statuses: dict[str, int]


@dataclass(frozen=True)
class Point:
    workers: int
    ideal: float
    rate: float
    count: int
    cpu: CpuUse
    active: float  # PostgreSQL's active backends, mean of the samples
    waits: Counter[str]


@dataclass(frozen=True)
class Measured:
    idle: Phase
    submit: Phase
    run: Phase
    rows: dict[str, Any]
    scaling: list[Point]
    versions: str


def _worker_env(
    db: str, redis_url: str, simulator: str, concurrency: int, **extra: str
) -> dict[str, str]:
    return auditq_env(
        db,
        redis_url,
        QUEUE,
        OPENAI_BASE_URL=simulator,
        WORKER_CONCURRENCY=str(concurrency),
        **extra,
    )


async def _idle(probe: Probe, procs: Stack, parts: Parts, env: dict[str, str], s: Sizes) -> Phase:
    worker = start_worker(procs, env, name="capacity-idle-worker")
    parts.procs["workers"] = [worker]
    await asyncio.sleep(2.0)  # the start-up reconcile run and first beats
    before, cpu = await probe.read(), parts.cpu()
    await asyncio.sleep(s.idle_s)
    used = parts.cpu().since(cpu)
    procs.stop(worker)
    parts.procs["workers"] = []
    return Phase(0, probe.delta(before, await probe.read()), used, {})


async def _post_singles(base: str, count: int) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)
    headers = {"content-type": "application/json"}

    async def submitter(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = audit_json(queue.get_nowait())
            response = await client.post("/api/v1/audits", content=body, headers=headers)
            response.raise_for_status()

    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        await asyncio.gather(*(submitter(client) for _ in range(SUBMITTERS)))


async def _submit(probe: Probe, procs: Stack, parts: Parts, db: str, s: Sizes) -> Phase:
    await _admin(db, "CHECKPOINT")
    before = await probe.read()
    env = auditq_env(db, parts.servers.servers.redis_url, QUEUE)
    base = start_api(procs, env, name="capacity-api")
    api = procs.procs[-1]
    parts.procs["api"] = [api]
    cpu = parts.cpu()
    await _post_singles(base, s.singles)
    used = parts.cpu().since(cpu)
    procs.stop(api)
    parts.procs["api"] = []
    return Phase(s.singles, probe.delta(before, await probe.read()), used, {})


async def _run(probe: Probe, procs: Stack, parts: Parts, env: dict[str, str], s: Sizes) -> Phase:
    before = await probe.read()
    worker = start_worker(procs, env, name="capacity-run-worker")
    parts.procs["workers"] = [worker]
    cpu = parts.cpu()
    deadline = time.monotonic() + 60 + s.singles / 10
    while (done := await probe.finished()) < s.singles:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {s.singles} audits ended in time")
        await asyncio.sleep(1.0)
    used = parts.cpu().since(cpu)
    procs.stop(worker)
    parts.procs["workers"] = []
    delta = probe.delta(before, await probe.read())
    timeline = await audits.timeline(probe.database_url)
    return Phase(s.singles, delta, used, timeline.statuses)


_SIZES_SQL = """
SELECT count(*) AS rows,
       pg_relation_size('audit') AS heap,
       pg_total_relation_size('audit') - pg_relation_size('audit')
         - pg_indexes_size('audit') AS toast,
       pg_indexes_size('audit') AS indexes,
       pg_total_relation_size('audit') AS total,
       avg(pg_column_size(audit.*)) AS row_bytes,
       avg(pg_column_size(content)) AS content,
       avg(pg_column_size(result)) AS result,
       avg(pg_column_size(criteria)) AS criteria
FROM audit
"""
_INDEX_SQL = """
SELECT indexrelname AS name, pg_relation_size(indexrelid) AS bytes
FROM pg_stat_user_indexes WHERE relname = 'audit' ORDER BY bytes DESC, name
"""


async def _row_bytes(db: str) -> dict[str, Any]:
    """Bytes of `audit` per row: as the run left it, then compacted by VACUUM FULL."""
    connection = await asyncpg.connect(asyncpg_dsn(db))
    try:
        as_run = dict(await connection.fetchrow(_SIZES_SQL) or {})
        indexes = {r["name"]: r["bytes"] for r in await connection.fetch(_INDEX_SQL)}
        await connection.execute("VACUUM FULL audit")
        compacted = dict(await connection.fetchrow(_SIZES_SQL) or {})
        compacted_indexes = {r["name"]: r["bytes"] for r in await connection.fetch(_INDEX_SQL)}
    finally:
        await connection.close()
    return {
        "as_run": as_run,
        "compacted": compacted,
        "indexes": indexes,
        "compacted_indexes": compacted_indexes,
    }


async def _admin(db: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(db))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _queue_backlog(base: str, count: int) -> None:
    """`count` audits through `POST /api/v1/batches`, 1,000 at a time."""
    async with httpx.AsyncClient(base_url=base, timeout=120) as client:
        for first in range(0, count, 1000):
            size = min(1000, count - first)
            body = {"audits": [audit_body(first + i) for i in range(size)]}
            response = await client.post("/api/v1/batches", json=body)
            response.raise_for_status()


_WAITS_SQL = """
SELECT coalesce(wait_event_type || ':' || wait_event, 'CPU') AS wait
FROM pg_stat_activity
WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()
"""


async def _drain_sampled(db: str, expected: int, timeout_s: float) -> tuple[int, Counter[str]]:
    """Poll until `expected` audits ended, sampling PostgreSQL's active backends; the
    number of samples and the waits seen."""
    connection = await asyncpg.connect(asyncpg_dsn(db))
    waits: Counter[str] = Counter()
    samples = 0
    done_sql = "SELECT count(*) FROM audit WHERE finished_at IS NOT NULL"
    deadline = time.monotonic() + timeout_s
    try:
        while await connection.fetchval(done_sql) < expected:
            if time.monotonic() > deadline:
                raise TimeoutError(f"the backlog of {expected} did not drain in {timeout_s} s")
            waits.update(r["wait"] for r in await connection.fetch(_WAITS_SQL))
            samples += 1
            await asyncio.sleep(0.5)
    finally:
        await connection.close()
    return samples, waits


async def _scale_point(
    procs: Stack, parts: Parts, db: str, base: str, env: dict[str, str], workers: int, s: Sizes
) -> Point:
    await _admin(db, "TRUNCATE audit, batch CASCADE")
    count = round(s.ideal(workers) * s.backlog_s)
    await _queue_backlog(base, count)
    # Started together, so that they drain the backlog together.
    started = [
        procs.start(f"capacity-worker-{workers}-{i}", procfile_worker(), env=env)
        for i in range(workers)
    ]
    for proc in started:
        procs.wait_ready(proc, _beating(env["REDIS_URL"], workers))
    parts.procs["workers"] = started
    cpu = parts.cpu()
    done_before = await _finished(db)
    samples, waits = await _drain_sampled(db, count, timeout_s=60 + 4 * s.backlog_s)
    used = parts.cpu().since(cpu)
    for proc in started:
        procs.stop(proc)
    parts.procs["workers"] = []
    timeline = await audits.timeline(db)
    return Point(
        workers=workers,
        ideal=s.ideal(workers),
        rate=steady_rate(timeline.finished),
        count=count - done_before,
        cpu=used,
        active=sum(waits.values()) / max(1, samples),
        waits=waits,
    )


def _beating(redis_url: str, workers: int) -> Callable[[], bool]:
    """Whether `workers` processes beat (shared/workers.py): each has started."""

    def probe() -> bool:
        client = redis.Redis.from_url(redis_url)
        try:
            # redis-py types every reply of its client as `Awaitable | Any`, sync or not.
            beating = cast(int, client.zcount(f"{QUEUE}:workers", time.time() - 30, "+inf"))
            return beating >= workers
        finally:
            client.close()

    return probe


async def _finished(db: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(db))
    try:
        done: int = await connection.fetchval(
            "SELECT count(*) FROM audit WHERE finished_at IS NOT NULL"
        )
    finally:
        await connection.close()
    return done


async def _scaling(procs: Stack, parts: Parts, db: str, s: Sizes) -> list[Point]:
    redis_url = parts.servers.servers.redis_url
    simulator = start_simulator(procs, str(s.latency_ms))
    parts.procs["simulator"] = [procs.procs[-1]]
    base = start_api(procs, auditq_env(db, redis_url, QUEUE), name="capacity-api")
    api = procs.procs[-1]
    parts.procs["api"] = [api]
    env = _worker_env(db, redis_url, simulator, s.concurrency)
    points = [await _scale_point(procs, parts, db, base, env, workers, s) for workers in s.workers]
    for proc in (api, *parts.procs["simulator"]):
        procs.stop(proc)
    return points


async def _measure(servers: PrivateServers, procs: Stack, db: str, s: Sizes) -> Measured:
    redis_url = servers.servers.redis_url
    probe = Probe(db, redis_url, servers.pg_wal)
    await probe.calibrate()
    parts = Parts(servers, {"api": [], "workers": [], "simulator": []})
    simulator = start_simulator(procs, s.run_latency_ms)
    parts.procs["simulator"] = [procs.procs[-1]]
    env = _worker_env(db, redis_url, simulator, s.run_concurrency)
    idle = await _idle(probe, procs, parts, env, s)
    submit = await _submit(probe, procs, parts, db, s)
    ran = await _run(probe, procs, parts, env, s)
    procs.stop(parts.procs["simulator"][0])
    rows = await _row_bytes(db)
    scaling = await _scaling(procs, parts, db, s)
    return Measured(idle, submit, ran, rows, scaling, servers.versions())


def run(run_: Run) -> list[Section]:
    chosen = sizes(run_.quick)
    with (
        stack() as procs,
        private_servers(procs) as servers,
        scratch_database(servers.servers, "auditq_bench_capacity") as db,
    ):
        measured = asyncio.run(_measure(servers, procs, db, chosen))
    return [section(measured, chosen)]
