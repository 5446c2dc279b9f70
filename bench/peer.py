"""Figure 4: the same audit job on Celery (the peer) and on auditq, at equal process count.

Celery as most users would run it (`bench/baselines/celery_app.py`): Redis broker,
prefork pool, default concurrency (one child process per core), each task running
auditq's `run_audit` under `asyncio.run`. auditq: as many `arq
worker.settings.WorkerSettings` processes as Celery has children, with their default
WORKER_CONCURRENCY. Same simulator (fixed 500 ms, no faults), same database writes.
Throughput is the steady completion rate; memory the peak resident set of every
process of each side (Celery's parent included), sampled through the run.
"""

import asyncio
import os
import sys
import threading
import time
from uuid import UUID

import asyncpg
from celery import Celery

from bench import audits
from bench.common import (
    Proc,
    Run,
    Stack,
    auditq_env,
    celery_broker_url,
    drop_queue,
    new_queue_name,
    scratch_database,
    stack,
    start_simulator,
    start_worker,
    steady_rate,
)
from bench.results import Section
from shared.batches import service as batches
from shared.batches.schemas import BatchCreate
from shared.db import SessionStatements, asyncpg_dsn, session_scope
from shared.tenants.caller import DEFAULT_TENANT


class PeakMemory:
    """Samples the summed RSS of some process trees every 0.2 s; keeps the peak (MiB)."""

    def __init__(self, procs: list[Proc]) -> None:
        self.procs, self.peak, self._stop = procs, 0.0, threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> "PeakMemory":
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while not self._stop.wait(0.2):
            try:
                self.peak = max(self.peak, sum(p.tree_rss_mb() for p in self.procs))
            except Exception:  # a process exiting between two reads
                continue


async def _record_without_jobs(
    database_url: str, redis_url: str, queue: str, count: int
) -> list[str]:
    """Audit rows committed with no arq job (Celery gets the tasks instead)."""
    from bench.workload import audit_body
    from shared.audits.schemas import AuditCreate

    async with audits.client(database_url, redis_url, queue) as c:
        data = BatchCreate(audits=[AuditCreate.model_validate(audit_body(i)) for i in range(count)])
        async with session_scope(c.factory) as session:
            created = await batches.create(
                SessionStatements(session), data=data, tenant=DEFAULT_TENANT, settings=c.settings
            )
            session.info.clear()  # the deferred arq jobs are never sent
        batch_id: UUID = created.resource.batch.id
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT id FROM audit WHERE batch_id = $1 ORDER BY batch_index", batch_id
        )
    finally:
        await connection.close()
    return [str(row["id"]) for row in rows]


def _celery(run_: Run, db: str, simulator: str, count: int) -> tuple[float, float, int]:
    queue = new_queue_name("celery")
    env = auditq_env(db, run_.servers.redis_url, queue, OPENAI_BASE_URL=simulator)
    with stack() as procs:
        celery = _start_celery(procs, env)
        children = len(celery.tree_pids()) - 1
        ids = asyncio.run(_record_without_jobs(db, run_.servers.redis_url, queue, count))
        app = Celery(broker=celery_broker_url(run_.servers.redis_url))
        with PeakMemory([celery]) as memory:
            for audit_id in ids:
                app.send_task("run_audit", args=[audit_id], queue=queue)
            timeline = asyncio.run(audits.wait_until_done(db, count, timeout_s=60 + count))
    drop_queue(run_.servers.redis_url, queue, job_prefixes=[queue, f"_kombu.binding.{queue}"])
    return steady_rate(timeline.finished), memory.peak, children


def _start_celery(procs: Stack, env: dict[str, str]) -> Proc:
    argv = [sys.executable, "-m", "celery", "-A", "bench.baselines.celery_app", "worker"]
    argv += ["--loglevel", "WARNING", "--without-mingle", "--without-gossip"]
    celery = procs.start("celery", argv, env=env)
    deadline = time.monotonic() + 60
    while len(celery.tree_pids()) < 1 + (os.cpu_count() or 1):
        if time.monotonic() > deadline or celery.popen.poll() is not None:
            raise RuntimeError(f"celery did not start its pool: see {celery.log}")
        time.sleep(0.2)
    return celery


def _auditq(run_: Run, db: str, simulator: str, processes: int, count: int) -> tuple[float, float]:
    queue = new_queue_name("peer")
    env = auditq_env(db, run_.servers.redis_url, queue, OPENAI_BASE_URL=simulator)
    with stack() as procs:
        workers = [start_worker(procs, env, name=f"worker-{i}") for i in range(processes)]
        with PeakMemory(workers) as memory:

            async def go() -> audits.Timeline:
                async with audits.client(db, run_.servers.redis_url, queue) as c:
                    await audits.submit(c, count)
                return await audits.wait_until_done(db, count, timeout_s=120 + count / 20)

            timeline = asyncio.run(go())
    drop_queue(run_.servers.redis_url, queue)
    return steady_rate(timeline.finished), memory.peak


def run(run_: Run) -> list[Section]:
    celery_jobs, auditq_jobs = (8, 100) if run_.quick else (60, 3000)
    latency = "100" if run_.quick else "500"
    with scratch_database(run_.servers, "auditq_bench_peer") as db, stack() as procs:
        simulator = start_simulator(procs, latency)
        celery_rate, celery_mb, children = _celery(run_, db, simulator, celery_jobs)
        asyncio.run(audits.truncate(db))
        auditq_rate, auditq_mb = _auditq(run_, db, simulator, children, auditq_jobs)
    return [
        _section(
            latency,
            children,
            celery_jobs,
            auditq_jobs,
            celery_rate,
            celery_mb,
            auditq_rate,
            auditq_mb,
        )
    ]


def _section(
    latency: str,
    processes: int,
    celery_jobs: int,
    auditq_jobs: int,
    celery_rate: float,
    celery_mb: float,
    auditq_rate: float,
    auditq_mb: float,
) -> Section:
    section = Section("peer", "4. Peer: the same job on Celery")
    section.add(
        f"The simulator at a fixed {latency} ms, no faults; the same `run_audit` job and "
        "database writes on both sides. **Celery** (`bench/baselines/celery_app.py`): Redis "
        f"broker, prefork pool with its default concurrency ({processes} children = cores), "
        "each task under `asyncio.run` with the job's context built and closed around it. "
        f"**auditq**: {processes} `arq worker.settings.WorkerSettings` processes, default "
        "WORKER_CONCURRENCY. Memory: peak summed RSS of all the side's processes (Celery's "
        "parent too).",
        "",
    )
    section.table(
        ["", "processes", "jobs", "audits/s", "peak memory", "audits/s per GiB"],
        [
            [
                "Celery (prefork)",
                f"{processes} + parent",
                f"{celery_jobs:,}",
                f"{celery_rate:.1f}",
                f"{celery_mb:.0f} MiB",
                f"{celery_rate / celery_mb * 1024:.0f}",
            ],
            [
                "auditq (arq)",
                str(processes),
                f"{auditq_jobs:,}",
                f"{auditq_rate:.1f}",
                f"{auditq_mb:.0f} MiB",
                f"{auditq_rate / auditq_mb * 1024:.0f}",
            ],
        ],
    )
    section.add(
        f"auditq completes **{auditq_rate / celery_rate:.0f}x** the audits per second of Celery "
        f"in {auditq_mb / celery_mb:.2f}x the memory: a prefork child holds one audit, "
        "waiting on the model, for the whole call; an arq process holds a hundred.",
        "",
    )
    section.target(
        "4 peer: audits/s auditq vs Celery (equal processes)",
        "—",
        f"{auditq_rate / celery_rate:.0f}x ({auditq_rate:.1f} vs {celery_rate:.1f}/s)",
        None,
    )
    section.target(
        "4 peer: peak memory auditq vs Celery", "—", f"{auditq_mb:.0f} vs {celery_mb:.0f} MiB", None
    )
    return section
