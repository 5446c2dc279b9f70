"""Figure 14: one worker's throughput with `samples=3` against `samples=1`.

The same stack as figure 3 (the Procfile's worker, WORKER_CONCURRENCY=100, the simulator
at a fixed latency with no faults, audits of 1 KB with 3 criteria submitted as batches),
run with every audit asking for one sample, then for three, alternately, `rounds` times.

An audit of three samples makes three model calls: where the model's capacity is the
limit (a provider's rate limit), the most it can do is a third of the audits. Here the
simulator has no such limit and the samples of an audit run at once in its one slot,
so what the figure shows is what the samples cost the worker itself: audits per
second (the steady rate, `common.steady_rate`), model calls per second, and CPU per
audit. The target is a third: three samples cost no more than three calls' worth.
"""

import asyncio
import time
from dataclasses import dataclass

from bench import audits
from bench.common import (
    Run,
    auditq_env,
    drop_queue,
    median,
    new_queue_name,
    scratch_database,
    stack,
    start_simulator,
    start_worker,
    steady_rate,
)
from bench.results import Section

SAMPLES = (1, 3)
TARGET = 1 / 3


@dataclass(frozen=True)
class Plan:
    concurrency: int
    latency_ms: int
    count: int
    rounds: int


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(concurrency=10, latency_ms=50, count=60, rounds=1)
    return Plan(concurrency=100, latency_ms=500, count=2000, rounds=2)


@dataclass(frozen=True)
class Measured:
    rate: float  # audits a second
    cpu_ms: float  # worker CPU per audit
    failed: int


def _measure(run_: Run, db: str, plan_: Plan, samples: int) -> Measured:
    redis_url = run_.servers.redis_url
    queue = new_queue_name("samples")
    asyncio.run(audits.truncate(db))
    with stack() as procs:
        simulator = start_simulator(procs, str(plan_.latency_ms))
        env = auditq_env(
            db,
            redis_url,
            queue,
            OPENAI_BASE_URL=simulator,
            WORKER_CONCURRENCY=str(plan_.concurrency),
        )
        worker = start_worker(procs, env)
        cpu = worker.cpu_s()
        timeline = asyncio.run(_submit_and_wait(db, redis_url, queue, plan_, samples))
        measured = Measured(
            rate=steady_rate(timeline.finished),
            cpu_ms=(worker.cpu_s() - cpu) * 1000 / plan_.count,
            failed=plan_.count - timeline.statuses.get("succeeded", 0),
        )
    drop_queue(redis_url, queue)
    return measured


async def _submit_and_wait(
    db: str, redis_url: str, queue: str, plan_: Plan, samples: int
) -> audits.Timeline:
    async with audits.client(db, redis_url, queue) as c:
        await audits.submit(c, plan_.count, samples=samples)
    slowest = plan_.count * plan_.latency_ms / 1000 / plan_.concurrency
    return await audits.wait_until_done(db, plan_.count, timeout_s=60 + 5 * slowest)


def run(run_: Run) -> list[Section]:
    plan_ = plan(run_.quick)
    measured: dict[int, list[Measured]] = {samples: [] for samples in SAMPLES}
    begun = time.monotonic()
    with scratch_database(run_.servers, "auditq_bench_samples") as db:
        for _ in range(plan_.rounds):
            for samples in SAMPLES:
                measured[samples].append(_measure(run_, db, plan_, samples))
    print(f"bench samples: {plan_.rounds} rounds in {time.monotonic() - begun:.0f} s")
    return [_section(plan_, measured)]


def _section(plan_: Plan, measured: dict[int, list[Measured]]) -> Section:
    section = Section("samples", "14. Samples: one worker at samples=3 against samples=1")
    section.add(
        f"The Procfile's worker, WORKER_CONCURRENCY={plan_.concurrency}, the simulator at a "
        f"fixed {plan_.latency_ms} ms with no faults; {plan_.count:,} audits of 1 KB with 3 "
        "criteria, all with `samples=1`, then all with `samples=3`, alternately, "
        f"{plan_.rounds} time(s); medians. An audit of three samples makes three calls at "
        "once in one worker slot: against a provider's rate limit it can go at a third of "
        "the rate at best; against this simulator, which has no limit, the figure is what "
        "the samples cost the worker (calls, validation, combining).",
        "",
    )
    rows = []
    rates = {}
    for samples, runs in measured.items():
        rate = median([m.rate for m in runs])
        cpu = median([m.cpu_ms for m in runs])
        rates[samples] = rate
        failed = sum(m.failed for m in runs)
        rows.append(
            [
                str(samples),
                f"{rate:.1f}/s",
                f"{rate * samples:.1f}/s",
                f"{cpu:.2f}",
                f"{cpu / samples:.2f}",
                str(failed),
            ]
        )
    section.table(
        [
            "samples",
            "audits completed",
            "model calls",
            "worker CPU ms/audit",
            "CPU ms per call",
            "not succeeded",
        ],
        rows,
    )
    ratio = rates[3] / rates[1]
    section.target(
        "14 audits/s at samples=3 vs samples=1",
        f"≥ {TARGET:.2f}x (a third: three calls each)",
        f"{ratio:.2f}x ({rates[3]:.1f} vs {rates[1]:.1f}/s)",
        ratio >= TARGET,
    )
    return section
