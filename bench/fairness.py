"""Figure 11: fair scheduling against first-in-first-out, side by side in one run.

Each side is a stack of its own (uvicorn and the Procfile's worker, `AUTH=keys`,
`WORKER_CONCURRENCY=10`, the simulator at 1 s): this tree, and the revision before
fair scheduling (FIFO) in a worktree of its own (`bench.revisions.checkout`), on a
database its own migrations made.

Tenant `a` queues 5,000 bulk audits (five batches), tenant `b` 200 (one batch) 5 s
later, then tenant `c` submits one single audit a second for 30 s. After the window,
the audits' times are read from PostgreSQL:
- interactive wait: each single's created_at → finished_at (unfinished ones count as
  not within the window);
- b's share: of the bulk audits started while both tenants had audits waiting, b's;
- throughput: audits finished per second from 10 s to the window's end.
"""

import asyncio
import subprocess
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx

from bench.common import (
    ROOT,
    THIS_TREE,
    Run,
    Tree,
    auditq_env,
    drop_queue,
    median,
    member_keys,
    new_queue_name,
    scratch_database,
    stack,
    start_apis,
    start_simulator,
    start_worker,
)
from bench.loadgen import percentile
from bench.results import Section
from bench.revisions import checkout
from bench.workload import audit_body, batch_body
from shared.db import (
    asyncpg_dsn,
)

TENANTS = ("a", "b", "c")
INTERACTIVE_P99_S = 2.0
B_SHARE = 0.45
THROUGHPUT_RATIO = 0.97


@dataclass(frozen=True)
class Plan:
    a_batches: int
    batch_size: int
    b_size: int
    b_after_s: float
    singles: int
    window_s: float


def plan(quick: bool) -> Plan:
    if quick:
        return Plan(a_batches=1, batch_size=200, b_size=20, b_after_s=2, singles=5, window_s=15)
    return Plan(a_batches=5, batch_size=1000, b_size=200, b_after_s=5, singles=30, window_s=75)


@dataclass(frozen=True)
class Figures:
    waits: list[float]  # seconds, of the singles finished within the window
    singles: int
    b_share: float | None
    throughput: float


def _fifo_revision() -> str:
    """The revision before fair scheduling: the parent of the commit adding the fair queue."""
    added = subprocess.run(
        ["git", "log", "--diff-filter=A", "--format=%H", "--", "shared/fair_queue.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    parent = subprocess.run(
        ["git", "rev-parse", "--short", f"{added[-1]}^"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return parent.stdout.strip()


async def _submit(base: str, keys: dict[str, str], plan_: Plan) -> float:
    """The plan's submissions on schedule; the moment b's batch was accepted (monotonic)."""

    def auth(tenant: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {keys[tenant]}"}

    async with httpx.AsyncClient(base_url=base + "/api/v1", timeout=60) as client:
        started = time.monotonic()
        for _ in range(plan_.a_batches):
            body = batch_body(plan_.batch_size, name="a")
            (await client.post("/batches", json=body, headers=auth("a"))).raise_for_status()
        await asyncio.sleep(max(0.0, started + plan_.b_after_s - time.monotonic()))
        body = batch_body(plan_.b_size, name="b")
        (await client.post("/batches", json=body, headers=auth("b"))).raise_for_status()
        b_at = time.monotonic()
        for index in range(plan_.singles):
            single = audit_body(index)
            (await client.post("/audits", json=single, headers=auth("c"))).raise_for_status()
            await asyncio.sleep(max(0.0, b_at + index + 1 - time.monotonic()))
        await asyncio.sleep(max(0.0, started + plan_.window_s - time.monotonic()))
    return b_at


_ROWS = (
    "SELECT tenant, batch_id IS NULL AS single, status, "
    "extract(epoch FROM created_at) AS created, extract(epoch FROM started_at) AS started, "
    "extract(epoch FROM finished_at) AS finished FROM audit"
)


async def _rows(database_url: str) -> list[dict[str, Any]]:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        return [dict(record) for record in await connection.fetch(_ROWS)]
    finally:
        await connection.close()


def _figures(rows: list[dict[str, Any]], plan_: Plan) -> Figures:
    singles = [r for r in rows if r["single"]]
    waits = [float(r["finished"] - r["created"]) for r in singles if r["status"] == "succeeded"]
    start = min(float(r["created"]) for r in rows)
    end = start + plan_.window_s
    b_rows = [r for r in rows if r["tenant"] == "b"]
    b_from = min(float(r["created"]) for r in b_rows)
    b_started = [float(r["started"]) for r in b_rows if r["started"] is not None]
    both_until = max(b_started) if len(b_started) == len(b_rows) else end
    bulk = [
        r
        for r in rows
        if not r["single"] and r["started"] is not None and b_from <= r["started"] <= both_until
    ]
    b_count = sum(r["tenant"] == "b" for r in bulk)
    finished = [float(r["finished"]) for r in rows if r["finished"] is not None]
    steady = [t for t in finished if start + 10 <= t <= end]
    return Figures(
        waits=sorted(waits),
        singles=len(singles),
        b_share=b_count / len(bulk) if bulk else None,
        throughput=len(steady) / (plan_.window_s - 10),
    )


def _side(run_: Run, tree: Tree, plan_: Plan) -> Figures:
    queue = new_queue_name("fairness")
    redis_url = run_.servers.redis_url
    database = scratch_database(
        run_.servers, "auditq_bench_fair", root=tree.root, python=tree.python
    )
    with database as db, stack() as procs:
        keys = asyncio.run(member_keys(db, TENANTS))
        simulator = start_simulator(procs, "1000")
        env = auditq_env(
            db, redis_url, queue, OPENAI_BASE_URL=simulator, WORKER_CONCURRENCY="10", AUTH="keys"
        )
        app = ("api", "api.app:create_app", "/api/v1/health/live", env)
        (base,) = start_apis(procs, [app], trees={"api": tree})
        start_worker(procs, env, tree=tree)
        asyncio.run(_submit(base, keys, plan_))
        procs.stop_all()
        rows = asyncio.run(_rows(db))
    drop_queue(redis_url, queue)
    return _figures(rows, plan_)


def run(run_: Run) -> list[Section]:
    plan_ = plan(run_.quick)
    revision = _fifo_revision()
    fifo_tree = checkout(revision)
    fair = _side(run_, THIS_TREE, plan_)
    fifo = _side(run_, fifo_tree, plan_)
    return [_section(plan_, revision, {"fair (this revision)": fair, "FIFO": fifo})]


def _wait(figures: Figures, q: float) -> str:
    if len(figures.waits) < figures.singles * q / 100:
        return "not within the window"
    return f"{percentile(figures.waits, q):.2f} s"


def _section(plan_: Plan, revision: str, sides: dict[str, Figures]) -> Section:
    section = Section("fairness", "11. Fairness: interactive, tenants and batches against FIFO")
    section.add(
        f"The simulator at 1 s, one worker with WORKER_CONCURRENCY=10, `AUTH=keys`. Tenant "
        f"`a` queues {plan_.a_batches * plan_.batch_size:,} bulk audits, `b` {plan_.b_size} "
        f"{plan_.b_after_s:.0f} s later, then `c` one interactive audit a second "
        f"({plan_.singles}); a {plan_.window_s:.0f} s window. FIFO is `{revision}` (the "
        "revision before fair scheduling), run from a checkout of it, one side after the "
        "other. Interactive wait: submit → succeeded; b's share: of the bulk audits started "
        "while both waited; throughput: audits finished per second from 10 s on.",
        "",
    )
    section.table(
        ["side", "interactive p50", "p99", "finished", "b's share", "audits/s"],
        [
            [
                name,
                _wait(f, 50),
                _wait(f, 99),
                f"{len(f.waits)}/{f.singles}",
                "-" if f.b_share is None else f"{f.b_share:.2f}",
                f"{f.throughput:.2f}",
            ]
            for name, f in sides.items()
        ],
    )
    fair, fifo = sides["fair (this revision)"], sides["FIFO"]
    quick = plan_.singles < 30
    p99 = percentile(fair.waits, 99) if len(fair.waits) == fair.singles else float("inf")
    section.target(
        "11 interactive submit → succeeded p99",
        f"≤ {INTERACTIVE_P99_S} s",
        _wait(fair, 99),
        None if quick else p99 <= INTERACTIVE_P99_S,
    )
    share = fair.b_share or 0.0
    section.target(
        "11 b's share while both wait",
        f"≥ {B_SHARE}",
        f"{share:.2f}",
        None if quick else share >= B_SHARE,
    )
    ratio = fair.throughput / fifo.throughput if fifo.throughput else 0.0
    section.target(
        "11 throughput against FIFO",
        f"≥ {THROUGHPUT_RATIO}x",
        f"{ratio:.3f}x",
        None if quick else ratio >= THROUGHPUT_RATIO,
    )
    if fair.waits:
        section.add(f"Median interactive wait on the fair side: {median(fair.waits):.2f} s.", "")
    return section
