"""Figure 9: what a key costs: submit and GET by id with `AUTH=keys` against `AUTH=none`.

Two API processes on one scratch database and Redis, each with a queue of its own and no
worker: one public (`AUTH=none`), one wanting a key (`AUTH=keys`), sent a member key of
tenant `default` made as `auditq key create` makes it. 10,000 audits of `default`
(reads.FILL) give both something to read. Closed-loop peaks of `POST /api/v1/audits`
and of `GET /api/v1/audits/{id}` (random ids), alternated between the two processes,
several runs, medians. The key is looked up once, then served from the process's
directory until PostgreSQL notifies a change (shared/tenants/directory.py).
"""

import asyncio
from uuid import UUID

import asyncpg

from bench.api_load import OPERATIONS, api_peak
from bench.common import (
    Load,
    Run,
    auditq_env,
    drop_queue,
    median,
    member_keys,
    new_queue_name,
    scratch_database,
    stack,
    start_apis,
)
from bench.reads import FILL
from bench.results import Section
from shared.db import (
    asyncpg_dsn,
)
from shared.tenants.caller import DEFAULT_TENANT

TARGET_RATIO = 0.95  # a key may cost at most about 5%
ROWS = 10_000
MODES = ("none", "keys")


async def _prepare(database_url: str) -> tuple[str, list[UUID]]:
    """A member key of `default`, and ids of audits to read."""
    key = (await member_keys(database_url, [DEFAULT_TENANT]))[DEFAULT_TENANT]
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(FILL, ROWS)
        ids = [r["id"] for r in await connection.fetch("SELECT id FROM audit LIMIT 1000")]
    finally:
        await connection.close()
    return key, ids


def _bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def run(run_: Run) -> list[Section]:
    runs, seconds = (1, 1.0) if run_.quick else (5, 4.0)
    redis_url = run_.servers.redis_url
    queues = {mode: new_queue_name(f"auth-{mode}") for mode in MODES}
    with scratch_database(run_.servers, "auditq_bench_auth") as db, stack() as procs:
        key, ids = asyncio.run(_prepare(db))
        bases = dict(
            zip(
                MODES,
                start_apis(
                    procs,
                    [
                        (
                            f"api-{mode}",
                            "api.app:create_app",
                            "/api/v1/health/live",
                            auditq_env(db, redis_url, queues[mode], AUTH=mode),
                        )
                        for mode in MODES
                    ],
                ),
                strict=True,
            )
        )
        servers = dict(zip(MODES, procs.procs[-2:], strict=True))
        keys = {"none": None, "keys": key}
        loads: dict[tuple[str, str], list[Load]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for mode in MODES:  # warm both: imports, pools, statement caches, the key's lookup
            for operation in OPERATIONS:
                api_peak(
                    bases[mode],
                    servers[mode],
                    operation,
                    ids,
                    seconds=1.0,
                    headers=_bearer(keys[mode]),
                )
        for index in range(runs):
            for operation in OPERATIONS:
                for mode in MODES if index % 2 == 0 else MODES[::-1]:
                    load, cpu_ms = api_peak(
                        bases[mode],
                        servers[mode],
                        operation,
                        ids,
                        seconds=seconds,
                        headers=_bearer(keys[mode]),
                    )
                    loads.setdefault((operation, mode), []).append(load)
                    cpu.setdefault((operation, mode), []).append(cpu_ms)
    for queue in queues.values():
        drop_queue(redis_url, queue)
    return [_section(loads, cpu)]


def _section(
    loads: dict[tuple[str, str], list[Load]], cpu: dict[tuple[str, str], list[float]]
) -> Section:
    section = Section("auth", "9. Keys: AUTH=keys against AUTH=none")
    runs = len(loads["submit", "none"])
    section.add(
        "Two API processes (one uvicorn worker each) on one database, 32 connections, "
        f"{runs} alternated runs of each, medians: `AUTH=none`, and `AUTH=keys` sent a "
        "member key of `auditq key create`, looked up by its SHA-256 once and then served "
        "from the process's directory until PostgreSQL notifies a change.",
        "",
    )
    rows = []
    for operation in OPERATIONS:
        rps = {mode: median([load.rps for load in loads[operation, mode]]) for mode in MODES}
        ratio = rps["keys"] / rps["none"]
        for mode in MODES:
            rows.append(
                [
                    f"{operation}, AUTH={mode}",
                    f"{rps[mode]:,.0f}",
                    ", ".join(f"{load.rps:,.0f}" for load in loads[operation, mode]),
                    f"{median(cpu[operation, mode]):.2f}",
                ]
            )
        section.target(
            f"9 {operation} req/s, AUTH=keys vs none",
            f"≥ {TARGET_RATIO}x",
            f"{ratio:.2f}x ({rps['keys']:,.0f} vs {rps['none']:,.0f} req/s)",
            ratio >= TARGET_RATIO,
        )
    section.table(["", "req/s (median)", "runs", "server CPU ms/request"], rows)
    return section
