"""auditq through PgBouncer in transaction-pooling mode (`DATABASE_POOL_MODE=transaction`).

Debian's `pgbouncer` in front of the test's database, with fewer server connections
than the stack's pools hold, so that every server connection serves many clients in
turn. The stack from the Procfile reaches PostgreSQL only through it, but for the key
directory's LISTEN and the migrations (`DATABASE_DIRECT_URL`). Keys are made and revoked
with the real `auditq key` command, through the pooler too. While single audits and
batches are submitted and run, with a fifth of the model's answers faulty, a worker is
killed with SIGKILL; then a batch's results are streamed, and a revoked key refused.
"""

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Literal

import asyncpg
import httpx
import pytest
import sqlalchemy

from shared.config import Settings
from shared.db import create_engine, create_session_factory, session_scope, statement_connection
from tests.faults.load import Submission, plan
from tests.faults.outcome import in_flight, query
from tests.faults.scenario import FaultRun, assert_promises_kept, stack_env
from tests.faults.services import OwnRedis
from tests.faults.stack import Api, Stack, auditq_command
from tests.fixtures.pgbouncer import (
    SERVER_POOL_SIZE,
    pgbouncer,
    pgbouncer_binary,
    pgbouncer_version,
)
from tests.fixtures.processes import Process, simulator_process

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        pgbouncer_binary() is None,
        reason="pgbouncer is not installed (Debian: apt-get install pgbouncer; .ci/run does)",
    ),
]

AUDITS = 200
BIG_BATCH = 150  # more than a result stream's chunk of 100: its later chunks are read too
CLIENTS = 20
FAULT_RATE = 0.2
TRANSIENT_FAULTS = "429,500,malformed"
LATENCY_MS = "20..200"


def big_batch() -> Submission:
    """One batch of BIG_BATCH audits."""
    audits = [audit for single in plan(BIG_BATCH, batch_share=0, seed=7) for audit in single.audits]
    return Submission(audits=audits, batch=True)


async def _statements_through(url: str, mode: Literal["session", "transaction"]) -> list[str]:
    """Concurrent statements through the pooler, as the API sends them; the errors seen."""
    engine = create_engine(Settings(database_url=url, database_pool_mode=mode), pool_size=10)
    sessions = create_session_factory(engine)
    errors: list[str] = []

    async def one(n: int) -> None:
        try:
            async with statement_connection(engine) as conn:
                await conn.fetchrow("SELECT $1::int + 1 AS n, now() AS at", n)
            async with session_scope(sessions) as session:
                await session.execute(sqlalchemy.text("SELECT :n + 2"), {"n": n})
        except (asyncpg.PostgresError, sqlalchemy.exc.DBAPIError) as exc:
            errors.append(type(exc).__name__)

    try:
        await asyncio.gather(*(one(n) for n in range(200)))
    finally:
        await engine.dispose()
    return errors


async def test_named_prepared_statements_break_through_the_pooler_and_the_setting_mends_it(
    tmp_path: Path, scratch_db: str
) -> None:
    """The pooler of these tests really pools by transaction: with asyncpg's defaults,
    statements fail through it; with `DATABASE_POOL_MODE=transaction`, none does."""
    with pgbouncer(scratch_db, log_dir=tmp_path) as bouncer:
        assert await _statements_through(bouncer.url, "session")
        assert await _statements_through(bouncer.url, "transaction") == []


async def mid_job(worker: Process, *, within: float = 60.0) -> None:
    """Wait until `worker` is running audits (it has logged their start, not their end)."""
    deadline = time.monotonic() + within
    while not in_flight(worker):
        assert time.monotonic() < deadline, worker.output()
        await asyncio.sleep(0.05)


def authorized(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def status_of(api: Api, key: str) -> int:
    response = httpx.get(f"{api.base_url}/audits", headers=authorized(key), timeout=10)
    return response.status_code


def streamed_results(api: Api, batch_id: str, key: str) -> list[dict[str, Any]]:
    """`GET /batches/{id}/results`, every line."""
    url = f"{api.base_url}/batches/{batch_id}/results"
    with httpx.stream("GET", url, headers=authorized(key), timeout=30) as response:
        assert response.status_code == 200, response.read()
        return [json.loads(line) for line in response.iter_lines() if line]


async def test_the_stack_through_pgbouncer_keeps_every_promise(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with (
        pgbouncer(scratch_db, log_dir=tmp_path) as bouncer,
        simulator_process(
            tmp_path, fault_rate=FAULT_RATE, faults=TRANSIENT_FAULTS, latency_ms=LATENCY_MS, seed=3
        ) as sim,
    ):
        env = stack_env(
            database_url=bouncer.url,
            redis_url=own_redis.url,
            simulator=sim,
            DATABASE_POOL_MODE="transaction",
            DATABASE_DIRECT_URL=scratch_db,
            AUTH="keys",
        )
        key = auditq_command(env, "key", "create", "--tenant", "acme").splitlines()[-1]
        stack = Stack(env, tmp_path)
        stacks.append(stack)
        api = await stack.start_web()
        doomed, survivor = stack.start_worker(), stack.start_worker()
        run = FaultRun("pgbouncer_transaction_mode", stack, api, sim, scratch_db)
        run.headers = authorized(key)
        run.submit_plan([big_batch(), *plan(AUDITS, seed=3)], clients=CLIENTS)

        await mid_job(doomed)
        killed_mid_job, replacement = await run.kill_worker(doomed)

        outcome = await run.settle()
        run.record(
            outcome,
            {
                "audits": AUDITS + BIG_BATCH,
                "pgbouncer": pgbouncer_version(str(pgbouncer_binary())),
                "pool_mode": "transaction",
                "server_connections": SERVER_POOL_SIZE,
                "fault_rate": FAULT_RATE,
                "faults": TRANSIENT_FAULTS,
                "model_latency_ms": LATENCY_MS,
            },
            jobs_in_flight_at_sigkill=len(killed_mid_job),
        )
        assert_promises_kept(
            run, outcome, submitted=AUDITS + BIG_BATCH, killed_mid_attempt=killed_mid_job
        )
        assert killed_mid_job, doomed.output()
        assert survivor.alive(), survivor.output()
        assert replacement.alive(), replacement.output()

        # A stream reads its later chunks on pooled connections, one statement each.
        [batch_id] = [b for b, size in run.load.batches.items() if size == BIG_BATCH]
        lines = streamed_results(api, batch_id, key)
        in_batch = await query(
            scratch_db,
            "SELECT id::text FROM audit WHERE batch_id = $1 ORDER BY batch_index",
            batch_id,
        )
        assert [line.get("id") for line in lines] == [row["id"] for row in in_batch]
        assert {line["status"] for line in lines} <= {"succeeded", "failed"}

        # Revoked through the pooler; heard by the API's LISTEN on the direct connection.
        assert status_of(api, key) == 200
        auditq_command(env, "key", "revoke", key)
        assert status_of(api, key) == 401
