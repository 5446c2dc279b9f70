"""Figure 12: webhooks. What one worker delivers, and what callbacks cost the audits.

1. **Delivery rate.** The outbox is filled with events the real way (batches of 1,000
   audits with `item_events`, cancelled by `batches.service.cancel`), then one worker
   process (the Procfile's), with no audit to run, delivers them to a receiver that
   answers 204 (`bench/receiver.py`, a process of its own). Events delivered per second
   (the steady rate of `settled_at`), and the worker's CPU per event.
2. **Audits with callbacks.** As figure 3 (one worker, WORKER_CONCURRENCY=100, the
   simulator at a fixed 500 ms), the same audits without callbacks and with a callback on
   every audit and every batch (`item_events`), to a receiver that fails 30% of the tries
   (503). Rounds alternate, twice each: the machine is shared. Audit throughput (the
   steady rate of `finished_at`) with callbacks over without; goal ≥ 0.95x. After the
   last audit, the wait until every event was delivered.
"""

import asyncio
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
    median,
    new_queue_name,
    scratch_database,
    stack,
    start_simulator,
    start_worker,
    steady_rate,
)
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
    rounds: int


def sizes(quick: bool) -> Sizes:
    if quick:
        return Sizes(
            events=200, audits=100, concurrency=10, latency_ms="50", latency_s=0.05, rounds=1
        )
    return Sizes(
        events=5000, audits=3000, concurrency=100, latency_ms="500", latency_s=0.5, rounds=2
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


@dataclass(frozen=True)
class Throughput:
    callbacks: bool
    rate: float
    cpu_ms: float
    tries: int
    failed_tries: int
    delivered_after_s: float | None  # after the last audit ended, until every event was


def _audits(run_: Run, db: str, size: Sizes, *, callbacks: bool) -> Throughput:
    redis_url = run_.servers.redis_url
    queue = new_queue_name("webhooks-audits")
    asyncio.run(audits.truncate(db))
    with stack() as procs:
        simulator = start_simulator(procs, size.latency_ms)
        url = start_receiver(procs, fail_share=FAILING_SHARE) if callbacks else None
        env = webhook_env(
            db,
            redis_url,
            queue,
            OPENAI_BASE_URL=simulator,
            WORKER_CONCURRENCY=str(size.concurrency),
        )
        worker: Proc = start_worker(procs, env)
        cpu = worker.cpu_s()
        timeline = asyncio.run(_submit_and_wait(db, redis_url, queue, size, url))
        audit_cpu = worker.cpu_s() - cpu
        delivered_after = None
        if url is not None:
            events = size.audits + -(-size.audits // audits.CHUNK)
            settled = asyncio.run(_wait_until_delivered(db, events, timeout_s=600))
            delivered_after = max(settled) - max(timeline.finished)
        stats = receiver_stats(url) if url else {"tries": 0, "failed": 0}
        measured = Throughput(
            callbacks=callbacks,
            rate=steady_rate(timeline.finished),
            cpu_ms=audit_cpu * 1000 / size.audits,
            tries=stats["tries"],
            failed_tries=stats["failed"],
            delivered_after_s=delivered_after,
        )
    drop_queue(redis_url, queue)
    return measured


async def _submit_and_wait(
    db: str, redis_url: str, queue: str, size: Sizes, url: str | None
) -> audits.Timeline:
    async with audits.client(db, redis_url, queue) as c:
        await audits.submit(c, size.audits, callback_url=url)
    timeout = 60 + 3 * size.audits * size.latency_s / 10
    return await audits.wait_until_done(db, size.audits, timeout_s=timeout)


def run(run_: Run) -> list[Section]:
    size = sizes(run_.quick)
    with scratch_database(run_.servers, "auditq_bench_webhooks") as db:
        delivery = _delivery_rate(run_, db, size)
        rounds = [
            _audits(run_, db, size, callbacks=callbacks)
            for _ in range(size.rounds)
            for callbacks in (False, True)
        ]
    return [_section(size, delivery, rounds)]


def _section(size: Sizes, delivery: Delivery, rounds: list[Throughput]) -> Section:
    section = Section("webhooks", "12. Webhooks: delivery rate, and audits with callbacks")
    section.add(
        f"**Delivery.** {delivery.events:,} events in the outbox (audits of batches with "
        "`item_events`, cancelled, and the batches' own), one worker process with nothing "
        "else to do, a receiver answering 204 in a process of its own: "
        f"**{delivery.rate:,.0f} events/s** delivered (steady rate of `settled_at`), "
        f"{delivery.cpu_ms:.2f} ms of worker CPU per event ({1000 / delivery.cpu_ms:,.0f}/s "
        "per core).",
        "",
        f"**Audits with callbacks.** One worker, WORKER_CONCURRENCY={size.concurrency}, the "
        f"simulator at {size.latency_ms} ms, {size.audits:,} audits as batches of 1,000; "
        "*with callbacks*: every audit and every batch sends its end (`item_events`) to a "
        f"receiver failing {FAILING_SHARE:.0%} of the tries. Rounds alternate.",
        "",
    )
    section.table(
        ["round", "callbacks", "audits/s", "CPU ms/audit", "tries (failed)", "all delivered"],
        [
            [
                str(index // 2 + 1),
                "yes" if r.callbacks else "no",
                f"{r.rate:.1f}",
                f"{r.cpu_ms:.2f}",
                f"{r.tries:,} ({r.failed_tries:,})" if r.callbacks else "—",
                "—"
                if r.delivered_after_s is None
                else f"{r.delivered_after_s:.1f} s after the last audit",
            ]
            for index, r in enumerate(rounds)
        ],
    )
    without = median([r.rate for r in rounds if not r.callbacks])
    with_callbacks = median([r.rate for r in rounds if r.callbacks])
    ratio = with_callbacks / without
    section.target(
        "12 webhooks: events delivered/s, one worker", "—", f"{delivery.rate:,.0f}/s", None
    )
    section.target(
        "12 webhooks: audit throughput with callbacks (30% failing) vs without",
        f"≥ {THROUGHPUT_TARGET}x",
        f"{ratio:.2f}x ({with_callbacks:.1f} vs {without:.1f}/s)",
        ratio >= THROUGHPUT_TARGET,
    )
    return section
