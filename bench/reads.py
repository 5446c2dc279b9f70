"""Figure 5: reads — one audit by id against a raw asyncpg SELECT; deep keyset pages.

A scratch database is filled in SQL (`INSERT … SELECT generate_series`, then
ANALYZE) with 1,000,000 audits (10,000 with --quick), 95% succeeded, created 10 ms
apart. Then, side by side:
- `GET /api/v1/audits/{id}` (random ids) on auditq and on the baseline
  (`bench/baselines/read_app.py`: FastAPI, one asyncpg `SELECT * … WHERE id = $1`);
- `GET /api/v1/audits?limit=20`: the first page against the page at depth 900,000
  (90% of the table), reached by a cursor signed with the API's `SECRET_KEY`
  for the row at that depth, with and without `status=succeeded`; one connection,
  requests back to back, the median latency of each.
EXPLAIN (ANALYZE, BUFFERS) of auditq's own statements shows the plans.
"""

import asyncio
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from bench.common import (
    SECRET_KEY,
    Load,
    Run,
    auditq_env,
    median,
    new_queue_name,
    peak_load,
    scratch_database,
    stack,
    start_apis,
)
from bench.results import Section
from shared.audits.repository import AuditFilters, page_query
from shared.audits.service import page_cursors
from shared.audits.status import AuditStatus
from shared.db import asyncpg_dsn
from shared.pagination import Cursors

TARGET_BY_ID = 0.8
TARGET_DEEP = 1.5
PAGE = 20
# The deep pages are read unfiltered and filtered by one status.
PAGE_STATUSES: tuple[AuditStatus | None, ...] = (None, AuditStatus.SUCCEEDED)

_RESULT = (
    '{"score": 82.5, "verdict": "pass", "pass_threshold": 70, "summary": "Simulated.", '
    '"findings": [{"criterion_id": "claims_substantiated", "verdict": "pass", "score": 82.5, '
    '"rationale": "Simulated judgement.", "evidence": ["recycled steel"]}], "dropped_quotes": 0}'
)
# Rows like the ones the worker leaves behind: 95% succeeded, 4% failed, 1% queued.
FILL = f"""
INSERT INTO audit (id, tenant, priority, status, subject, content, criteria, model, metadata,
                   pass_threshold, attempts, attempt_limit, result, error_code, error_message,
                   prompt_tokens, completion_tokens, created_at, updated_at, started_at,
                   finished_at)
SELECT gen_random_uuid(), 'default', 'bulk', s.status, 'Product page ' || i,
       repeat('Made from 90% recycled steel, certified carbon neutral. ', 8),
       '[{{"id": "claims_substantiated", "description": "Claims are backed.", "weight": 1.0}}]',
       'gpt-4o-mini', '{{"source": "bench"}}', 70, 1, 5,
       CASE WHEN s.status = 'succeeded' THEN '{_RESULT}'::jsonb END,
       CASE WHEN s.status = 'failed' THEN 'invalid_model_output' END,
       CASE WHEN s.status = 'failed' THEN 'The reply did not follow the schema.' END,
       CASE WHEN s.status = 'succeeded' THEN 900 END,
       CASE WHEN s.status = 'succeeded' THEN 300 END,
       t.at, t.at, t.at + interval '1 second',
       CASE WHEN s.status <> 'queued' THEN t.at + interval '2 seconds' END
FROM generate_series(1, $1) AS i,
     LATERAL (SELECT CASE WHEN i % 100 = 7 THEN 'queued' WHEN i % 25 = 3 THEN 'failed'
                          ELSE 'succeeded' END AS status) AS s,
     LATERAL (SELECT timestamptz '2026-01-01' + i * interval '10 ms' AS at) AS t
"""


async def _fill(database_url: str, rows: int) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(FILL, rows)
        await connection.execute("ANALYZE audit")
    finally:
        await connection.close()


def _filters(status: AuditStatus | None) -> AuditFilters:
    return AuditFilters(status=(status,) if status else ())


def _cursors(status: AuditStatus | None) -> Cursors:
    """The cursors the API hands out for `GET /audits` with this status filter."""
    return page_cursors(SECRET_KEY.encode(), _filters(status))


def _list_statement(status: AuditStatus | None, cursor: str | None) -> tuple[str, list[Any]]:
    """The very statement `audits.list_page` runs (filters, keyset, `limit + 1`)."""
    after = None if cursor is None else _cursors(status).read_keyset(cursor)
    return page_query(filters=_filters(status), limit=PAGE + 1, after=after)


async def _explain(connection: asyncpg.Connection, statement: tuple[str, list[Any]]) -> str:
    query, args = statement
    rows = await connection.fetch(f"EXPLAIN (ANALYZE, BUFFERS) {query}", *args)
    return "\n".join(row[0] for row in rows)


async def _prepare(database_url: str, depth: int) -> dict[str, Any]:
    """Ids to read, the cursors of the deep pages, the plans of the four page queries."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        ids: list[UUID] = [
            row["id"]
            for row in await connection.fetch("SELECT id FROM audit ORDER BY random() LIMIT 1000")
        ]
        cursors: dict[AuditStatus | None, str] = {}
        for status in PAGE_STATUSES:
            where = "WHERE status = $1" if status else "WHERE $1::text IS NULL"
            row = await connection.fetchrow(
                f"SELECT created_at, id FROM audit {where} "
                "ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
                status,
                depth - 1,
            )
            created_at: datetime = row["created_at"]
            cursors[status] = _cursors(status).keyset(created_at, row["id"])
        plans = {
            (status, deep): await _explain(
                connection, _list_statement(status, cursors[status] if deep else None)
            )
            for status in PAGE_STATUSES
            for deep in (False, True)
        }
    finally:
        await connection.close()
    return {"ids": ids, "cursors": cursors, "plans": plans}


def run(run_: Run) -> list[Section]:
    rows = 10_000 if run_.quick else 1_000_000
    depth = rows * 9 // 10
    runs, seconds = (1, 1.0) if run_.quick else (3, 4.0)
    redis_url = run_.servers.redis_url
    with scratch_database(run_.servers, "auditq_bench_reads") as db, stack() as procs:
        asyncio.run(_fill(db, rows))
        prepared = asyncio.run(_prepare(db, depth))
        env = auditq_env(db, redis_url, new_queue_name("reads"))
        auditq, baseline = start_apis(
            procs,
            [
                ("api", "api.app:create_app", "/api/v1/health/live", env),
                ("baseline-reads", "bench.baselines.read_app:create_app", "/health", env),
            ],
        )
        bases = {"auditq": auditq, "baseline": baseline}
        paths = [f"/api/v1/audits/{audit_id}" for audit_id in prepared["ids"]]
        by_id: dict[str, list[Load]] = {"auditq": [], "baseline": []}
        cpu: dict[str, list[float]] = {"auditq": [], "baseline": []}
        servers = dict(zip(("auditq", "baseline"), procs.procs[-2:], strict=True))
        for name in bases:
            peak_load(bases[name], paths, duration_s=1.0)
        for index in range(runs):
            for name in ("auditq", "baseline") if index % 2 == 0 else ("baseline", "auditq"):
                before = servers[name].cpu_s()
                load = peak_load(bases[name], paths, duration_s=seconds)
                by_id[name].append(load)
                cpu[name].append((servers[name].cpu_s() - before) * 1000 / max(1, load.requests))
        pages = _pages(bases["auditq"], prepared["cursors"], runs, seconds)
    return [_section(rows, depth, by_id, cpu, pages, prepared["plans"])]


def _pages(
    base: str, cursors: dict[str | None, str], runs: int, seconds: float
) -> dict[tuple[str | None, bool], list[float]]:
    """Median latency (ms) of each page, one connection, requests back to back."""
    latencies: dict[tuple[str | None, bool], list[float]] = {}
    for _ in range(runs):
        for status in (None, "succeeded"):
            for deep in (False, True):
                query = [f"limit={PAGE}"]
                if status:
                    query.append(f"status={status}")
                if deep:
                    query.append(f"cursor={cursors[status]}")
                path = "/api/v1/audits?" + "&".join(query)
                load = peak_load(base, [path], connections=1, duration_s=seconds / 2)
                latencies.setdefault((status, deep), []).append(load.p50_ms)
    return latencies


def _section(
    rows: int,
    depth: int,
    by_id: dict[str, list[Load]],
    cpu: dict[str, list[float]],
    pages: dict[tuple[str | None, bool], list[float]],
    plans: dict[tuple[str | None, bool], str],
) -> Section:
    section = Section("reads", "5. Reads: one audit by id, deep pages")
    rps = {name: median([load.rps for load in loads]) for name, loads in by_id.items()}
    ratio = rps["auditq"] / rps["baseline"]
    section.add(
        f"{rows:,} audits generated in SQL (95% succeeded, each with a result). "
        "**Baseline** (`bench/baselines/read_app.py`): FastAPI, one raw asyncpg "
        "`SELECT * FROM audit WHERE id = $1` on an asyncpg pool with its defaults, the row "
        "returned as a dict. 32 connections, "
        f"1,000 random ids, {len(by_id['auditq'])} alternated runs, medians.",
        "",
    )
    section.table(
        ["GET /api/v1/audits/{id}", "req/s (median)", "runs", "p50 / p99", "server CPU ms/request"],
        [
            [
                name,
                f"{rps[name]:,.0f}",
                ", ".join(f"{load.rps:,.0f}" for load in loads),
                f"{median([x.p50_ms for x in loads]):.1f} / "
                f"{median([x.p99_ms for x in loads]):.1f} ms",
                f"{median(cpu[name]):.2f}",
            ]
            for name, loads in by_id.items()
        ],
    )
    section.add(f"auditq / baseline: **{ratio:.2f}x** (target ≥ {TARGET_BY_ID}x).", "")
    section.target(
        "5 GET audit by id vs raw SELECT",
        f"≥ {TARGET_BY_ID}x",
        f"{ratio:.2f}x ({rps['auditq']:,.0f} vs {rps['baseline']:,.0f} req/s)",
        ratio >= TARGET_BY_ID,
    )
    table = []
    for status in (None, "succeeded"):
        first, deep = median(pages[(status, False)]), median(pages[(status, True)])
        label = f"status={status}" if status else "no filter"
        table.append([label, f"{first:.2f} ms", f"{deep:.2f} ms", f"{deep / first:.2f}x"])
        section.target(
            f"5 page at depth {depth:,} vs first ({label})",
            f"≤ {TARGET_DEEP}x",
            f"{deep / first:.2f}x ({deep:.2f} vs {first:.2f} ms)",
            deep / first <= TARGET_DEEP,
        )
    section.add(f"`GET /api/v1/audits?limit={PAGE}`, one connection, median latency:", "")
    section.table(["filter", "first page", f"page at depth {depth:,}", "ratio"], table)
    section.add("The statements `audits.list_page` runs, `EXPLAIN (ANALYZE, BUFFERS)`:", "")
    for (status, deep), plan in plans.items():
        label = f"status={status}" if status else "no filter"
        section.add(
            f"{'Page at depth ' + format(depth, ',') if deep else 'First page'}, {label}:", ""
        )
        section.add("```", plan, "```", "")
    return section
