"""Processes and servers failing under load: no audit lost, none finished twice.

1,000 audits from 50 concurrent clients (single audits and small batches), the model
answering 429, 500, garbage or nothing a fifth of the time, and meanwhile a worker killed
with SIGKILL, Redis restarted empty, PostgreSQL restarted. The bar: every audit
terminal, at least 97% succeeded, none twice.
"""

from pathlib import Path
from typing import Any

import pytest

from tests.faults.scenario import FaultRun, assert_promises_kept, stack_env
from tests.faults.services import OwnPostgres, OwnRedis
from tests.faults.stack import Stack
from tests.fixtures.processes import simulator_process

pytestmark = pytest.mark.slow

AUDITS = 1000
CLIENTS = 50
# Spreads the submissions over about half a minute, so the faults land while clients submit.
CLIENT_PAUSE_S = 3.0
FAULT_RATE = 0.2
TRANSIENT_FAULTS = "429,500,hang,malformed"
LATENCY_MS = "20..200"
OUTAGE_S = 3.0


def _settings(**extra: Any) -> dict[str, Any]:
    return {
        "audits": AUDITS,
        "clients": CLIENTS,
        "fault_rate": FAULT_RATE,
        "faults": TRANSIENT_FAULTS,
        "model_latency_ms": LATENCY_MS,
        **extra,
    }


async def test_a_worker_killed_and_redis_restarted_empty_mid_run_lose_nothing(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with simulator_process(
        tmp_path, fault_rate=FAULT_RATE, faults=TRANSIENT_FAULTS, latency_ms=LATENCY_MS, seed=1
    ) as sim:
        stack = Stack(
            stack_env(database_url=scratch_db, redis_url=own_redis.url, simulator=sim), tmp_path
        )
        stacks.append(stack)
        api = await stack.start_web()
        doomed, survivor = stack.start_worker(), stack.start_worker()
        run = FaultRun("worker_killed_and_redis_restarted", stack, api, sim, scratch_db)
        run.submit(AUDITS, clients=CLIENTS, pause_s=CLIENT_PAUSE_S)

        await run.accepted(AUDITS // 4)
        await run.running(5)
        killed_mid_job, replacement = await run.kill_worker(doomed)

        await run.accepted(AUDITS * 6 // 10)
        await own_redis.restart(down_for=OUTAGE_S)
        run.infrastructure["redis_restart_empty"] += 1

        outcome = await run.settle()
        run.record(
            outcome,
            _settings(workers=2, postgres=_where(scratch_db), redis_outage_s=OUTAGE_S),
            jobs_in_flight_at_sigkill=len(killed_mid_job),
        )
        assert_promises_kept(run, outcome, submitted=AUDITS, killed_mid_attempt=killed_mid_job)
        assert killed_mid_job, doomed.output()
        assert survivor.alive(), survivor.output()
        assert replacement.alive(), replacement.output()


def _where(database_url: str) -> str:
    return "own (pgserver)" if "host=/" in database_url else "machine, scratch database"


async def test_postgres_restarted_mid_run_loses_nothing(
    tmp_path: Path,
    own_postgres: OwnPostgres,
    own_scratch_db: str,
    own_redis: OwnRedis,
    stacks: list[Stack],
) -> None:
    with simulator_process(
        tmp_path, fault_rate=FAULT_RATE, faults=TRANSIENT_FAULTS, latency_ms=LATENCY_MS, seed=2
    ) as sim:
        stack = Stack(
            stack_env(database_url=own_scratch_db, redis_url=own_redis.url, simulator=sim),
            tmp_path,
        )
        stacks.append(stack)
        api = await stack.start_web()
        workers = [stack.start_worker(), stack.start_worker()]
        run = FaultRun("postgres_restarted", stack, api, sim, own_scratch_db)
        run.submit(AUDITS, clients=CLIENTS, pause_s=CLIENT_PAUSE_S)

        await run.accepted(AUDITS * 4 // 10)
        await run.running(5)
        await own_postgres.restart(down_for=OUTAGE_S)
        run.infrastructure["postgres_restart"] += 1

        outcome = await run.settle()
        retried = [e for e in stack.worker_events() if e.get("event") == "finish_write_retry"]
        run.record(
            outcome,
            _settings(workers=2, postgres="own (pgserver)", postgres_outage_s=OUTAGE_S),
            finish_write_retries=len(retried),
        )
        assert_promises_kept(run, outcome, submitted=AUDITS, database_down=True)
        assert run.load.database_unavailable > 0, "the clients never saw PostgreSQL down"
        assert all(worker.alive() for worker in workers), stack.outputs()
