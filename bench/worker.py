"""Figure 3: one worker process keeping its model slots full.

For each latency profile of the simulator (fixed 500 ms, uniform 0.5-2 s), in one run:
- auditq: `arq worker.settings.WorkerSettings`, WORKER_CONCURRENCY=100, against the
  simulator (no faults); audits are submitted as batches once the worker polls;
- baseline: a bare arq worker (`bench/baselines/sleep_worker.py`, arq's defaults,
  the same `max_jobs`) whose job only sleeps a duration drawn from the same profile.

Throughput is the steady rate (`common.steady_rate`: ramp-up and drain cut off) of
completions, against the ideal `concurrency / mean latency`. Worker CPU from
/proc/<pid>/stat over the whole run (idle polling included), Redis commands from
INFO commandstats (minus what the submission itself sent and the server's
background rate measured just before), peak RSS from VmHWM. Then, with the worker
idle, audits submitted one at a time give the submit → running delay.
"""

import asyncio
import random
import time
from dataclasses import dataclass
from datetime import datetime

import redis
from arq import create_pool
from arq.connections import ArqRedis, RedisSettings
from arq.jobs import deserialize_result

from bench import audits
from bench.common import (
    Proc,
    Run,
    auditq_env,
    drop_queue,
    median,
    new_queue_name,
    redis_command_count,
    scratch_database,
    stack,
    start_simulator,
    start_worker,
    steady_rate,
)
from bench.loadgen import percentile
from bench.results import Section

IDEAL_TARGET = 0.9
BARE_TARGET = 1.0


@dataclass(frozen=True)
class Profile:
    name: str
    latency_ms: str  # as `auditq simulator --latency-ms` takes it
    low_s: float
    high_s: float
    count: int

    @property
    def mean_s(self) -> float:
        return (self.low_s + self.high_s) / 2


@dataclass(frozen=True)
class Measured:
    rate: float
    cpu_ms: float
    redis_per_job: float | None
    peak_rss_mb: float
    occupancy: float
    failed: int


def profiles(quick: bool) -> tuple[int, list[Profile]]:
    if quick:
        return 10, [Profile("fixed 50 ms", "50", 0.05, 0.05, 100)]
    return 100, [
        Profile("fixed 500 ms", "500", 0.5, 0.5, 3000),
        Profile("uniform 0.5-2 s", "500..2000", 0.5, 2.0, 1500),
    ]


def _occupancy(starts: list[float], ends: list[float]) -> float:
    """Mean number of jobs in flight over the steady window (10th to 90th percentile end)."""
    ordered = sorted(ends)
    lo, hi = ordered[len(ordered) // 10], ordered[len(ordered) * 9 // 10]
    busy = sum(max(0.0, min(e, hi) - max(s, lo)) for s, e in zip(starts, ends, strict=True))
    return busy / (hi - lo)


def _background_rate(redis_url: str, seconds: float = 1.0) -> float:
    before = redis_command_count(redis_url)
    time.sleep(seconds)
    return (redis_command_count(redis_url) - before - 1) / seconds


def _run_auditq(
    run_: Run, db: str, profile: Profile, concurrency: int, *, delays: bool
) -> tuple[Measured, list[float]]:
    redis_url = run_.servers.redis_url
    queue = new_queue_name("worker")
    asyncio.run(audits.truncate(db))
    with stack() as procs:
        simulator = start_simulator(procs, profile.latency_ms)
        background = _background_rate(redis_url)
        env = auditq_env(
            db, redis_url, queue, OPENAI_BASE_URL=simulator, WORKER_CONCURRENCY=str(concurrency)
        )
        worker = start_worker(procs, env)
        cpu, commands, started = worker.cpu_s(), redis_command_count(redis_url), time.monotonic()
        timeline = asyncio.run(_submit_and_wait(db, redis_url, queue, profile))
        elapsed = time.monotonic() - started
        sent = (
            redis_command_count(redis_url)
            - commands
            - audits.redis_commands_to_submit(profile.count)
        )
        measured = Measured(
            rate=steady_rate(timeline.finished),
            cpu_ms=(worker.cpu_s() - cpu) * 1000 / profile.count,
            redis_per_job=(sent - background * elapsed) / profile.count,
            peak_rss_mb=worker.peak_rss_mb(),
            occupancy=_occupancy(timeline.started, timeline.finished),
            failed=profile.count - timeline.statuses.get("succeeded", 0),
        )
        idle = _idle_delays(db, redis_url, queue, run_.quick) if delays else []
    drop_queue(redis_url, queue)
    return measured, idle


async def _submit_and_wait(
    db: str, redis_url: str, queue: str, profile: Profile
) -> audits.Timeline:
    async with audits.client(db, redis_url, queue) as c:
        await audits.submit(c, profile.count)
    timeout = 60 + 3 * profile.count * profile.high_s / 10
    return await audits.wait_until_done(db, profile.count, timeout_s=timeout)


def _idle_delays(db: str, redis_url: str, queue: str, quick: bool) -> list[float]:
    """Submit → running on an idle worker: audits one at a time, 50-250 ms apart."""
    count = 5 if quick else 60

    async def measure() -> list[float]:
        await audits.truncate(db)
        async with audits.client(db, redis_url, queue) as c:
            await audits.submit_one_by_one(c, count, gap_s=(0.05, 0.25))
        timeline = await audits.wait_until_done(db, count, timeout_s=60)
        return [s - c for c, s in zip(timeline.created, timeline.started, strict=True)]

    return asyncio.run(measure())


def _run_bare(run_: Run, profile: Profile, concurrency: int) -> Measured:
    redis_url = run_.servers.redis_url
    queue = new_queue_name("bare")
    rng = random.Random(5)
    durations = [rng.uniform(profile.low_s, profile.high_s) for _ in range(profile.count)]
    job_ids = [f"{queue}:{i}" for i in range(profile.count)]
    env = {"REDIS_URL": redis_url, "QUEUE_NAME": queue, "WORKER_CONCURRENCY": str(concurrency)}
    with stack() as procs:
        worker: Proc = start_worker(
            procs, env, name="bare-arq", settings="bench.baselines.sleep_worker.WorkerSettings"
        )
        cpu = worker.cpu_s()
        timeout = 60 + 3 * profile.count * profile.high_s / 10
        starts, ends = asyncio.run(_enqueue_and_wait(redis_url, queue, job_ids, durations, timeout))
        measured = Measured(
            rate=steady_rate(ends),
            cpu_ms=(worker.cpu_s() - cpu) * 1000 / profile.count,
            redis_per_job=None,
            peak_rss_mb=worker.peak_rss_mb(),
            occupancy=_occupancy(starts, ends),
            failed=0,
        )
    client = redis.Redis.from_url(redis_url)
    try:
        client.delete(*[f"arq:result:{job_id}" for job_id in job_ids])
    finally:
        client.close()
    drop_queue(redis_url, queue)
    return measured


async def _enqueue_and_wait(
    redis_url: str, queue: str, job_ids: list[str], durations: list[float], timeout_s: float
) -> tuple[list[float], list[float]]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url), default_queue_name=queue)
    try:
        for first in range(0, len(job_ids), 200):
            await asyncio.gather(
                *(
                    pool.enqueue_job("sleep_job", durations[i], _job_id=job_ids[i])
                    for i in range(first, min(first + 200, len(job_ids)))
                )
            )
        keys = [f"arq:result:{job_id}" for job_id in job_ids]
        deadline = time.monotonic() + timeout_s
        while (done := await _count_existing(pool, keys)) < len(keys):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{done} of {len(keys)} sleep jobs ended within {timeout_s} s")
            await asyncio.sleep(0.5)
        results = [deserialize_result(raw) for raw in await pool.mget(*keys)]
    finally:
        await pool.aclose()
    if not all(r.success for r in results):
        raise RuntimeError("a sleep job failed")
    return [_epoch(r.start_time) for r in results], [_epoch(r.finish_time) for r in results]


async def _count_existing(pool: ArqRedis, keys: list[str]) -> int:
    found = 0
    for first in range(0, len(keys), 500):
        found += await pool.exists(*keys[first : first + 500])
    return found


def _epoch(moment: datetime) -> float:
    return moment.timestamp()


def run(run_: Run) -> list[Section]:
    concurrency, chosen = profiles(run_.quick)
    rows: list[tuple[Profile, Measured, Measured]] = []
    delays: list[float] = []
    with scratch_database(run_.servers, "auditq_bench_worker") as db:
        for index, profile in enumerate(chosen):
            measured, idle = _run_auditq(run_, db, profile, concurrency, delays=index == 0)
            delays = delays or idle
            rows.append((profile, measured, _run_bare(run_, profile, concurrency)))
    run_.figures["worker_rate"] = rows[0][1].rate
    run_.figures["worker_ideal"] = concurrency / rows[0][0].mean_s
    return [_section(concurrency, rows, delays)]


def _section(
    concurrency: int, rows: list[tuple[Profile, Measured, Measured]], delays: list[float]
) -> Section:
    section = Section("worker", "3. Worker: one process, model slots kept full")
    section.add(
        f"One worker process, WORKER_CONCURRENCY={concurrency}, the simulator with no faults; "
        "audits of 1 KB with 3 criteria, submitted as batches of 1,000 once the worker polls. "
        "**Ideal** = concurrency / mean latency. **Bare arq** "
        "(`bench/baselines/sleep_worker.py`): a job that only sleeps a duration drawn from the "
        "same profile, `max_jobs` the same, every other setting arq's default (`poll_delay` "
        "0.5 s, results kept). *Slots busy*: mean jobs in flight over the steady window (for "
        "auditq, from claim to finish). *Jobs/s per core*: 1,000 / CPU ms per job, the most one "
        "process can do with a whole core to itself.",
        "",
    )
    table: list[list[str]] = []
    for profile, auditq, bare in rows:
        ideal = concurrency / profile.mean_s
        for name, m in (("auditq", auditq), ("bare arq", bare)):
            table.append(
                [
                    f"{profile.name}, {profile.count:,} jobs",
                    name,
                    f"{m.rate:.1f}/s",
                    f"{m.rate / ideal:.2f}x",
                    f"{m.occupancy:.1f}",
                    f"{m.cpu_ms:.2f} ({1000 / m.cpu_ms:,.0f}/s)",
                    "—" if m.redis_per_job is None else f"{m.redis_per_job:.1f}",
                    f"{m.peak_rss_mb:.0f} MiB",
                ]
            )
        met_ideal = auditq.rate / ideal >= IDEAL_TARGET
        section.target(
            f"3 worker {profile.name}: vs ideal ({ideal:.0f}/s)",
            f"≥ {IDEAL_TARGET}x",
            f"{auditq.rate / ideal:.2f}x ({auditq.rate:.1f}/s)",
            met_ideal,
        )
        section.target(
            f"3 worker {profile.name}: vs bare arq",
            f"≥ {BARE_TARGET}x",
            f"{auditq.rate / bare.rate:.2f}x (bare {bare.rate:.1f}/s)",
            auditq.rate / bare.rate >= BARE_TARGET,
        )
        if auditq.failed:
            section.add(f"**{auditq.failed} audits did not succeed** in {profile.name}.", "")
    section.table(
        [
            "profile",
            "worker",
            "completed",
            "vs ideal",
            "slots busy",
            "CPU ms/job (jobs/s per core)",
            "Redis cmds/job",
            "peak RSS",
        ],
        table,
    )
    if delays:
        ms = [d * 1000 for d in delays]
        section.add(
            f"Submit → running on an idle worker ({len(ms)} audits one at a time, commit to "
            f"claim, PostgreSQL's clock): **p50 {median(ms):.0f} ms, p99 "
            f"{percentile(ms, 99):.0f} ms**, max {max(ms):.0f} ms.",
            "",
        )
        section.target(
            "3 submit → running, idle (p50 / p99)",
            "—",
            f"{median(ms):.0f} / {percentile(ms, 99):.0f} ms",
            None,
        )
    return section
