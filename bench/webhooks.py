"""Figure 15: webhooks. What one worker delivers, and what callbacks cost the audits.

1. **Delivery rate.** The outbox is filled with events the real way (batches of 1,000
   audits with `item_events`, cancelled by `batches.service.cancel`), then one worker
   process (the Procfile's), with no audit to run, delivers them to a receiver that
   answers 204 (`bench/receiver.py`, a process of its own). Events delivered per second
   (the steady rate of `settled_at`), and the worker's CPU per event.
2. **Audits with callbacks.** As figure 3 (one worker, WORKER_CONCURRENCY=100, the
   simulator at a fixed 500 ms), the same audits without callbacks (batches), then each
   submitted alone with a callback (`POST /audits`' way; all queued before the worker
   starts, as one client sends them slower than the worker runs them), then as batches
   with a callback and `item_events` (every audit's end also checks its batch's, in a
   transaction), then without callbacks again; the receiver fails 30% of the tries
   (503). Audit throughput (the steady rate of `finished_at`) with callbacks over the
   mean of the two runs without; goal ≥ 0.95x. A minute after the last audit: how long
   the events delivered took from the end to their 2xx (p50, p99), and how many were
   still pending (in their backoff after several failed tries).
"""

import asyncio
import statistics
import sys
import time
from dataclasses import dataclass

import asyncpg
import httpx

from bench import audits
from bench.common import (
    Proc,
    Run,
    Stack,
    auditq_env,
    drop_queue,
    http_ok,
    new_queue_name,
    scratch_database,
    stack,
    start_simulator,
    start_worker,
    steady_rate,
)
from bench.loadgen import percentile
from bench.results import Section
from cli.dev import free_port
from shared.batches import service as batches
from shared.db import SessionStatements, asyncpg_dsn
from shared.queue import transaction
from shared.webhooks.signing import new_secret

THROUGHPUT_TARGET = 0.95
FAILING_SHARE = 0.3
SECRET = new_secret()


@dataclass(frozen=True)
class Sizes:
    events: int
    audits: int
    concurrency: int
    latency_ms: str
    latency_s: float
    delivery_wait_s: float


def sizes(quick: bool) -> Sizes:
    if quick:
        return Sizes(
            events=200,
            audits=100,
            concurrency=10,
            latency_ms="50",
            latency_s=0.05,
            delivery_wait_s=5.0,
        )
    return Sizes(
        events=5000,
        audits=3000,
        concurrency=100,
        latency_ms="500",
        latency_s=0.5,
        delivery_wait_s=60.0,
    )


def start_receiver(stack_: Stack, *, fail_share: float) -> str:
    """`bench.receiver`; the URL to call back."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.receiver", "--port", str(port)]
    argv += ["--fail-share", str(fail_share)]
    stack_.start(f"receiver-{port}", argv, ready=http_ok(f"http://127.0.0.1:{port}/stats"))
    return f"http://127.0.0.1:{port}/hooks"


def receiver_stats(url: str) -> dict[str, int]:
    stats: dict[str, int] = httpx.get(url.replace("/hooks", "/stats"), timeout=5).json()
    return stats


def webhook_env(db: str, redis_url: str, queue: str, **extra: str) -> dict[str, str]:
    return auditq_env(
        db,
        redis_url,
        queue,
        WEBHOOK_SECRET=SECRET,
        WEBHOOK_ALLOW_PRIVATE="true",  # the receiver is on loopback
        **extra,
    )


async def _query(db: str, sql: str) -> list[asyncpg.Record]:
    connection = await asyncpg.connect(asyncpg_dsn(db))
    try:
        rows: list[asyncpg.Record] = await connection.fetch(sql)
        return rows
    finally:
        await connection.close()


async def _wait_until_delivered(db: str, expected: int, *, timeout_s: float) -> list[float]:
    """Poll until `expected` events are delivered; their `settled_at`, epoch seconds."""
    deadline = time.monotonic() + timeout_s
    sql = "SELECT count(*) AS n FROM webhook_event WHERE status = 'delivered'"
    while (done := (await _query(db, sql))[0]["n"]) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{done} of {expected} events delivered within {timeout_s} s")
        await asyncio.sleep(0.25)
    rows = await _query(
        db,
        "SELECT extract(epoch FROM settled_at) AS t FROM webhook_event WHERE status = 'delivered'",
    )
    return [float(row["t"]) for row in rows]


async def _fill_outbox(db: str, redis_url: str, queue: str, count: int, url: str) -> None:
    """`count` events, as the API writes them: batches with item events, cancelled."""
    async with audits.client(db, redis_url, queue) as c:
        batch_ids = await audits.submit(c, count, callback_url=url)
        for batch_id in batch_ids:
            async with transaction(c.factory, c.redis) as session:
                conn = SessionStatements(session)
                batch = await batches.get_or_raise(conn, batch_id=batch_id, tenant=None)
                await batches.cancel(conn, batch=batch)


@dataclass(frozen=True)
class Delivery:
    rate: float
    cpu_ms: float
    events: int


def _delivery_rate(run_: Run, db: str, size: Sizes) -> Delivery:
    redis_url = run_.servers.redis_url
    fill_queue, worker_queue = new_queue_name("webhooks-fill"), new_queue_name("webhooks")
    asyncio.run(audits.truncate(db))
    with stack() as procs:
        url = start_receiver(procs, fail_share=0.0)
        asyncio.run(_fill_outbox(db, redis_url, fill_queue, size.events, url))
        events = size.events + -(-size.events // audits.CHUNK)  # and one per batch
        worker = start_worker(procs, webhook_env(db, redis_url, worker_queue))
        cpu = worker.cpu_s()
        settled = asyncio.run(_wait_until_delivered(db, events, timeout_s=600))
        measured = Delivery(
            rate=steady_rate(settled),
            cpu_ms=(worker.cpu_s() - cpu) * 1000 / events,
            events=events,
        )
    drop_queue(redis_url, fill_queue)
    drop_queue(redis_url, worker_queue)
    return measured


# How the audits are submitted in each run, and whether they call back.
NONE, SINGLES, ITEMS = (
    "no callbacks",
    "single audits, each with a callback",
    ("batches with a callback and item_events"),
)
MODES = (NONE, SINGLES, ITEMS, NONE)


@dataclass(frozen=True)
class Throughput:
    mode: str
    rate: float
    cpu_ms: float
    tries: int
    failed_tries: int
    latency_ms: tuple[float, float] | None  # p50, p99 of end → 2xx, of those delivered
    pending: int  # events not yet delivered `delivery_wait_s` after the last audit


def _audits(run_: Run, db: str, size: Sizes, mode: str) -> Throughput:
    redis_url = run_.servers.redis_url
    queue = new_queue_name("webhooks-audits")
    asyncio.run(audits.truncate(db))
    with stack() as procs:
        simulator = start_simulator(procs, size.latency_ms)
        url = None if mode == NONE else start_receiver(procs, fail_share=FAILING_SHARE)
        env = webhook_env(
            db,
            redis_url,
            queue,
            OPENAI_BASE_URL=simulator,
            WORKER_CONCURRENCY=str(size.concurrency),
        )
        if mode == SINGLES:  # one at a time, a client is slower than the worker: before it
            asyncio.run(_submit(db, redis_url, queue, size, mode, url))
        worker: Proc = start_worker(procs, env)
        cpu = worker.cpu_s()
        if mode != SINGLES:
            asyncio.run(_submit(db, redis_url, queue, size, mode, url))
        timeout = 60 + 3 * size.audits * size.latency_s / 10
        timeline = asyncio.run(audits.wait_until_done(db, size.audits, timeout_s=timeout))
        audit_cpu = worker.cpu_s() - cpu
        latency, pending = None, 0
        if url is not None:
            time.sleep(size.delivery_wait_s)
            latency, pending = asyncio.run(_delivery_latency(db))
        stats = receiver_stats(url) if url else {"tries": 0, "failed": 0}
        measured = Throughput(
            mode=mode,
            rate=steady_rate(timeline.finished),
            cpu_ms=audit_cpu * 1000 / size.audits,
            tries=stats["tries"],
            failed_tries=stats["failed"],
            latency_ms=latency,
            pending=pending,
        )
    drop_queue(redis_url, queue)
    return measured


async def _delivery_latency(db: str) -> tuple[tuple[float, float] | None, int]:
    rows = await _query(
        db,
        "SELECT status, extract(epoch FROM settled_at - created_at) * 1000 AS ms "
        "FROM webhook_event",
    )
    delivered = [float(row["ms"]) for row in rows if row["status"] == "delivered"]
    pending = sum(1 for row in rows if row["status"] == "pending")
    if not delivered:
        return None, pending
    return (percentile(delivered, 50), percentile(delivered, 99)), pending


async def _submit(
    db: str, redis_url: str, queue: str, size: Sizes, mode: str, url: str | None
) -> None:
    async with audits.client(db, redis_url, queue) as c:
        if mode == SINGLES:
            await audits.submit_singles(c, size.audits, callback_url=url)
        else:
            await audits.submit(c, size.audits, callback_url=url)


def run(run_: Run) -> list[Section]:
    size = sizes(run_.quick)
    with scratch_database(run_.servers, "auditq_bench_webhooks") as db:
        delivery = _delivery_rate(run_, db, size)
        rounds = [_audits(run_, db, size, mode) for mode in MODES]
    return [_section(size, delivery, rounds)]


def _section(size: Sizes, delivery: Delivery, rounds: list[Throughput]) -> Section:
    section = Section("webhooks", "15. Webhooks: delivery rate, and audits with callbacks")
    section.add(
        f"**Delivery.** {delivery.events:,} events in the outbox (audits of batches with "
        "`item_events`, cancelled, and the batches' own), one worker process with nothing "
        "else to do, a receiver answering 204 in a process of its own: "
        f"**{delivery.rate:,.0f} events/s** delivered (steady rate of `settled_at`), "
        f"{delivery.cpu_ms:.2f} ms of worker CPU per event ({1000 / delivery.cpu_ms:,.0f}/s "
        "per core).",
        "",
        f"**Audits with callbacks.** One worker, WORKER_CONCURRENCY={size.concurrency}, the "
        f"simulator at {size.latency_ms} ms, {size.audits:,} audits a run, in this order; "
        f"the receiver fails {FAILING_SHARE:.0%} of the tries. *End → 2xx*: over the events "
        f"delivered {size.delivery_wait_s:.0f} s after the last audit; *pending* then: events in "
        "their backoff after several failed tries (2 s doubling).",
        "",
    )
    section.table(
        ["run", "audits/s", "CPU ms/audit", "tries (failed)", "end → 2xx p50 / p99", "pending"],
        [
            [
                r.mode,
                f"{r.rate:.1f}",
                f"{r.cpu_ms:.2f}",
                "—" if r.mode == NONE else f"{r.tries:,} ({r.failed_tries:,})",
                "—"
                if r.latency_ms is None
                else f"{r.latency_ms[0]:,.0f} / {r.latency_ms[1]:,.0f} ms",
                "—" if r.mode == NONE else str(r.pending),
            ]
            for r in rounds
        ],
    )
    without = statistics.fmean(r.rate for r in rounds if r.mode == NONE)
    section.target(
        "15 webhooks: events delivered/s, one worker", "—", f"{delivery.rate:,.0f}/s", None
    )
    for mode, figure in ((SINGLES, "single audits"), (ITEMS, "batches, item_events")):
        rate = next(r.rate for r in rounds if r.mode == mode)
        section.target(
            f"15 webhooks: audits/s with callbacks (30% failing) vs without, {figure}",
            f"≥ {THROUGHPUT_TARGET}x",
            f"{rate / without:.2f}x ({rate:.1f} vs {without:.1f}/s)",
            rate / without >= THROUGHPUT_TARGET,
        )
    return section
