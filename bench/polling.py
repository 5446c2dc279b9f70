"""Figure 6: 200 clients polling their audits once a second while the worker runs flat out.

One API process, one worker (WORKER_CONCURRENCY=100) and the simulator (fixed
500 ms) share the machine. The queue is filled well beyond the run; the last 200
audits submitted are the clients' own, still queued or running while they poll.
The worker's completion rate is measured in two windows of the same run: before
the clients start (the reference) and while they poll (`GET /api/v1/audits/{id}`,
each client once a second, one connection each, an open loop timed from when
each poll was due).
"""

import asyncio
import time
from uuid import UUID

import asyncpg

from bench import audits
from bench.common import (
    Load,
    Run,
    auditq_env,
    drop_queue,
    new_queue_name,
    run_loadgen,
    scratch_database,
    stack,
    start_api,
    start_simulator,
    start_worker,
)
from bench.results import Section
from shared.db import asyncpg_dsn

TARGET_P99_MS = 100.0
TARGET_THROUGHPUT = 0.9


async def _client_audit_ids(database_url: str, batch_id: UUID) -> list[UUID]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch("SELECT id FROM audit WHERE batch_id = $1", batch_id)
    finally:
        await connection.close()
    return [row["id"] for row in rows]


def _rate(finished: list[float], start: float, end: float) -> float:
    return sum(start <= f < end for f in finished) / (end - start)


def run(run_: Run) -> list[Section]:
    if run_.quick:
        clients, concurrency, latency, settle, reference, polling = 20, 10, "50", 0.5, 1.5, 2.0
    else:
        clients, concurrency, latency, settle, reference, polling = 200, 100, "500", 3.0, 12.0, 20.0
    expected = run_.figures.get("worker_rate", 150.0 if not run_.quick else 100.0)
    backlog = int(1.5 * expected * (settle + reference + polling + 3))
    redis_url = run_.servers.redis_url
    queue = new_queue_name("polling")
    with scratch_database(run_.servers, "auditq_bench_polling") as db, stack() as procs:
        simulator = start_simulator(procs, latency)
        env = auditq_env(
            db, redis_url, queue, OPENAI_BASE_URL=simulator, WORKER_CONCURRENCY=str(concurrency)
        )
        base = start_api(procs, env)
        start_worker(procs, env)

        async def fill() -> list[UUID]:
            async with audits.client(db, redis_url, queue) as c:
                await audits.submit(c, backlog)
                (batch_id,) = await audits.submit(c, clients, start=backlog)
            return await _client_audit_ids(db, batch_id)

        ids = asyncio.run(fill())
        time.sleep(settle)
        reference_window = (time.time(), time.time() + reference)
        time.sleep(reference)
        polled_from = time.time()
        polls = run_loadgen(
            base,
            [f"/api/v1/audits/{audit_id}" for audit_id in ids],
            rate=clients / 1.0,
            connections=clients,
            duration_s=polling,
            random_paths=False,
        )
        polled_window = (polled_from, time.time())
        # What is left of the backlog is dropped with the scratch database.
        timeline = asyncio.run(audits.timeline(db))
    drop_queue(redis_url, queue)
    if timeline.statuses.get("queued", 0) == 0:
        raise RuntimeError("the queue ran dry before the end: raise the backlog")
    before = _rate(timeline.finished, *reference_window)
    during = _rate(timeline.finished, *polled_window)
    return [_section(clients, concurrency, polls, before, during, run_.figures.get("worker_rate"))]


def _section(
    clients: int,
    concurrency: int,
    polls: Load,
    before: float,
    during: float,
    figure3: float | None,
) -> Section:
    section = Section("polling", "6. Polling under load")
    section.add(
        f"{clients} clients, each polling its own audit once a second (`GET "
        f"/api/v1/audits/{{id}}`, one connection each, bench.loadgen open loop) while one "
        f"worker (WORKER_CONCURRENCY={concurrency}) drains a full queue against the "
        "simulator; API, worker, simulator, PostgreSQL, Redis and the load generator on the "
        "same machine.",
        "",
    )
    reference = f"{before:.1f}/s just before the clients started, same run"
    if figure3 is not None:
        reference += f"; {figure3:.1f}/s in figure 3"
    section.table(
        ["polls", "p50", "p99", "worker while polled", "worker without polls"],
        [
            [
                f"{polls.requests:,} ({polls.rps:.0f}/s)",
                f"{polls.p50_ms:.1f} ms",
                f"{polls.p99_ms:.1f} ms",
                f"{during:.1f}/s ({during / before:.2f}x)",
                reference,
            ]
        ],
    )
    section.target(
        "6 poll latency p99 under load",
        f"< {TARGET_P99_MS:.0f} ms",
        f"{polls.p99_ms:.1f} ms",
        polls.p99_ms < TARGET_P99_MS,
    )
    section.target(
        "6 worker throughput while polled",
        f"≥ {TARGET_THROUGHPUT}x unpolled",
        f"{during / before:.2f}x ({during:.1f} vs {before:.1f}/s)",
        during / before >= TARGET_THROUGHPUT,
    )
    return section
