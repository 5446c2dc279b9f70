"""Figure 1: `POST /api/v1/audits` against the floor of a validated, durable, queued submit.

Both apps run under uvicorn (one worker process) on the same scratch database and
Redis, each with a queue of its own and no worker draining it. Peaks are closed
loops (wrk, or bench.loadgen) alternated between the two apps, several runs,
medians; then each app takes an open loop at half its own peak for p50/p99.
The load generator's own ceiling is measured first against a trivial endpoint.
"""

import asyncio

import asyncpg

from bench.common import (
    Load,
    Proc,
    Run,
    auditq_env,
    drop_queue,
    median,
    new_queue_name,
    peak_load,
    run_loadgen,
    scratch_database,
    stack,
    start_apis,
)
from bench.results import Section
from bench.workload import audit_json
from shared.db import asyncpg_dsn

TARGET_RATIO = 0.8
PATH = "/api/v1/audits"


def _settings(quick: bool) -> dict[str, float]:
    if quick:
        return {"runs": 1, "duration_s": 1.0, "warmup_s": 0.5, "fixed_s": 1.0}
    return {"runs": 5, "duration_s": 5.0, "warmup_s": 1.0, "fixed_s": 5.0}


def _peak(base: str, server: Proc, duration_s: float) -> tuple[Load, float]:
    """One closed-loop run and the server's CPU ms per request."""
    before = server.cpu_s()
    load = peak_load(base, [PATH], method="POST", body=audit_json(), duration_s=duration_s)
    return load, (server.cpu_s() - before) * 1000 / max(1, load.requests)


async def _count(database_url: str, queue_rows: str) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        count: int = await connection.fetchval(queue_rows)
    finally:
        await connection.close()
    return count


def run(run_: Run) -> list[Section]:
    cfg = _settings(run_.quick)
    queues = {"auditq": new_queue_name("submit"), "baseline": new_queue_name("submit-base")}
    redis_url = run_.servers.redis_url
    with scratch_database(run_.servers, "auditq_bench_submit") as db, stack() as procs:
        env = {name: auditq_env(db, redis_url, queue) for name, queue in queues.items()}
        auditq, baseline = start_apis(
            procs,
            [
                ("api", "api.app:create_app", "/api/v1/health/live", env["auditq"]),
                ("baseline", "bench.baselines.submit_app:create_app", "/health", env["baseline"]),
            ],
        )
        bases = {"auditq": auditq, "baseline": baseline}
        meters = dict(zip(("auditq", "baseline"), procs.procs[-2:], strict=True))
        ceiling = peak_load(bases["baseline"], ["/health"], duration_s=cfg["duration_s"])
        for name in bases:  # warm both: imports, pools, statement caches
            peak_load(
                bases[name], [PATH], method="POST", body=audit_json(), duration_s=cfg["warmup_s"]
            )
        peaks: dict[str, list[Load]] = {"auditq": [], "baseline": []}
        cpu: dict[str, list[float]] = {"auditq": [], "baseline": []}
        for index in range(int(cfg["runs"])):
            order = ["auditq", "baseline"] if index % 2 == 0 else ["baseline", "auditq"]
            for name in order:
                load, cpu_ms = _peak(bases[name], meters[name], cfg["duration_s"])
                peaks[name].append(load)
                cpu[name].append(cpu_ms)
        fixed = {
            name: run_loadgen(
                bases[name],
                [PATH],
                method="POST",
                body=audit_json(),
                rate=0.5 * median([p.rps for p in peaks[name]]),
                duration_s=cfg["fixed_s"],
                connections=64,
            )
            for name in bases
        }
        rows = asyncio.run(_count(db, "SELECT count(*) FROM audit"))
    for queue in queues.values():
        drop_queue(redis_url, queue)
    return [_loadgen_section(ceiling), _section(peaks, cpu, fixed, rows)]


def _loadgen_section(ceiling: Load) -> Section:
    section = Section("loadgen", "0. The load generator's ceiling")
    section.add(
        f"{ceiling.tool}, closed loop, 32 connections, against the baseline app's trivial "
        f"`GET /health` (FastAPI, one uvicorn worker): **{ceiling.rps:,.0f} req/s** "
        f"(p50 {ceiling.p50_ms:.2f} ms, p99 {ceiling.p99_ms:.2f} ms). Every figure below is "
        "well under it, so the servers, not the load generator, set them; the load "
        "generator shares the machine's cores with them all the same.",
        "",
    )
    section.target(
        "load generator ceiling (trivial endpoint)", "—", f"{ceiling.rps:,.0f} req/s", None
    )
    return section


def _section(
    peaks: dict[str, list[Load]],
    cpu: dict[str, list[float]],
    fixed: dict[str, Load],
    rows: int,
) -> Section:
    rps = {name: median([p.rps for p in loads]) for name, loads in peaks.items()}
    ratio = rps["auditq"] / rps["baseline"]
    section = Section("submit", "1. Submit: POST /api/v1/audits")
    section.add(
        "A 1 KB audit (3 criteria, metadata), one uvicorn worker process, 32 connections, "
        f"{len(peaks['auditq'])} alternated runs of each app, medians. **Baseline** "
        "(`bench/baselines/submit_app.py`): FastAPI validating the same body with the same "
        "`AuditCreate`, one raw asyncpg `INSERT` of the same row (`new_row`), one arq "
        "`enqueue_job` — no ORM, no idempotency hash, no request log or middleware; an "
        "asyncpg pool of auditq's size with asyncpg's defaults (its reset query on release). "
        "Both commit for real (fsync and synchronous_commit as the server has them).",
        "",
    )
    section.table(
        ["", "req/s (median)", "runs", "server CPU ms/request", "p50 / p99 at 50% of peak"],
        [
            [
                name,
                f"{rps[name]:,.0f}",
                ", ".join(f"{p.rps:,.0f}" for p in peaks[name]),
                f"{median(cpu[name]):.2f}",
                f"{fixed[name].p50_ms:.1f} / {fixed[name].p99_ms:.1f} ms ({fixed[name].tool})",
            ]
            for name in ("auditq", "baseline")
        ],
    )
    section.add(
        f"auditq / baseline: **{ratio:.2f}x** (target ≥ {TARGET_RATIO}x). "
        f"{rows:,} audits were written in all.",
        "",
    )
    section.target(
        "1 submit req/s vs baseline",
        f"≥ {TARGET_RATIO}x",
        f"{ratio:.2f}x ({rps['auditq']:,.0f} vs {rps['baseline']:,.0f} req/s)",
        ratio >= TARGET_RATIO,
    )
    section.target(
        "1 submit p50 / p99 at 50% of peak",
        "—",
        f"{fixed['auditq'].p50_ms:.1f} / {fixed['auditq'].p99_ms:.1f} ms "
        f"(baseline {fixed['baseline'].p50_ms:.1f} / {fixed['baseline'].p99_ms:.1f})",
        None,
    )
    return section
