"""Graceful operations, with real processes: deploys and restarts lose no work.

- SIGTERM to a worker: it takes no new job, lets running audits finish within
  `job_completion_wait`, hands the rest back (`queued`) and exits 0; they run again.
- SIGTERM to the API (uvicorn): requests in flight are answered before it exits.
- A worker outlives Redis restarts (it reconnects; the reconciler re-enqueues what
  Redis lost) and a PostgreSQL restart (its finish write is retried, the model's
  answer is kept).
- `/health/ready` and `arq --check` say what is down.
"""

import asyncio
import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from shared.config import Settings
from tests.faults.load import plan
from tests.faults.outcome import (
    FINISH_EVENTS,
    query,
    wait_until_settled,
    write_figures,
)
from tests.faults.scenario import FaultRun, assert_promises_kept, stack_env
from tests.faults.services import OwnPostgres, OwnRedis
from tests.faults.stack import Api, Stack
from tests.fixtures.processes import ROOT, simulator_process
from tests.fixtures.simulator import SimulatorHandle
from worker.settings import worker_options

pytestmark = pytest.mark.slow

JOB_COMPLETION_WAIT_S = worker_options(Settings())["job_completion_wait"]
# Longer than `job_completion_wait`: a hung call is still running when the wait ends.
PATIENT_MODEL_TIMEOUT_S = JOB_COMPLETION_WAIT_S + 15


async def model_requests(sim: SimulatorHandle, count: int, *, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while sim.stats()["requests"] < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"the model got {sim.stats()} after {within}s, not {count}")
        await asyncio.sleep(0.05)


async def post_audit(api: Api, number: int) -> str:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as http:
        body = plan(1, seed=number)[0].body()
        response = await http.post("/audits", json=body)
    assert response.status_code == 202, response.text
    audit_id: str = response.json()["id"]
    return audit_id


async def audits(database_url: str) -> dict[str, tuple[str, int]]:
    rows = await query(database_url, "SELECT id::text AS id, status, attempts FROM audit")
    return {row["id"]: (row["status"], row["attempts"]) for row in rows}


def finishes(events: list[dict[str, object]]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for event in events:
        if event.get("event") in FINISH_EVENTS:
            audit_id = str(event["audit_id"])
            counted[audit_id] = counted.get(audit_id, 0) + 1
    return counted


async def test_sigterm_lets_running_audits_finish_then_hands_the_rest_back(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with simulator_process(tmp_path, latency_ms="3000") as sim:
        env = stack_env(
            database_url=scratch_db,
            redis_url=own_redis.url,
            simulator=sim,
            OPENAI_TIMEOUT_S=str(PATIENT_MODEL_TIMEOUT_S),
            WORKER_CONCURRENCY="4",
        )
        stack = Stack(env, tmp_path)
        stacks.append(stack)
        api = await stack.start_web()
        sim.script(["hang", "hang", "ok", "ok"])
        submitted = [await post_audit(api, n) for n in range(4)]
        worker = stack.start_worker()
        await model_requests(sim, 4)

        worker.signal(signal.SIGTERM)
        signalled = time.monotonic()
        late = await post_audit(api, 4)  # after the signal: not for this worker
        assert await worker.exit_code(within=JOB_COMPLETION_WAIT_S + 20) == 0, worker.output()
        took = time.monotonic() - signalled

        # The answered audits finished; the hung ones were handed back when the wait ran out.
        after = await audits(scratch_db)
        assert sorted(after[i] for i in submitted) == [
            ("queued", 1),
            ("queued", 1),
            ("succeeded", 1),
            ("succeeded", 1),
        ], worker.output()
        assert after[late] == ("queued", 0), worker.output()
        assert JOB_COMPLETION_WAIT_S - 1 < took < JOB_COMPLETION_WAIT_S + 15, took
        interrupted = [e for e in worker.events() if e.get("event") == "audit_interrupted"]
        assert [e["new_status"] for e in interrupted] == ["queued", "queued"], worker.output()

        # Handed back with their jobs: the next worker runs them, and the late one.
        replacement = stack.start_worker()
        await wait_until_settled(scratch_db, within=60)
        final = await audits(scratch_db)
        assert sorted(final.values()) == [("succeeded", 1)] * 3 + [("succeeded", 2)] * 2
        assert sim.stats()["requests"] == 7
        assert set(finishes(stack.worker_events()).values()) == {1}
        replacement.signal(signal.SIGTERM)
        assert await replacement.exit_code(within=30) == 0, replacement.output()
        write_figures(
            "sigterm_worker",
            {
                "audits_submitted": 5,
                "running_at_sigterm": 4,
                "finished_within_wait": 2,
                "handed_back": 2,
                "lost": 0,
                "duplicated": 0,
                "exit_code": 0,
                "seconds_to_exit": round(took, 1),
                "job_completion_wait_s": JOB_COMPLETION_WAIT_S,
            },
        )


async def _waiting_on_lock(database_url: str, count: int, *, within: float = 30.0) -> None:
    name = database_url.rsplit("/", 1)[-1].split("?")[0]
    deadline = time.monotonic() + within
    while True:
        rows = await query(
            database_url,
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = $1 AND wait_event_type = 'Lock'",
            name,
        )
        if rows[0]["n"] >= count:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{rows[0]['n']} requests waiting on the lock, not {count}")
        await asyncio.sleep(0.05)


async def test_sigterm_to_the_api_answers_the_requests_in_flight(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    import asyncpg

    from shared.db import asyncpg_dsn

    with simulator_process(tmp_path) as sim:
        stack = Stack(
            stack_env(database_url=scratch_db, redis_url=own_redis.url, simulator=sim), tmp_path
        )
        stacks.append(stack)
        api = await stack.start_web()
        # Hold every insert into `audit` so the requests are surely in flight.
        blocker = await asyncpg.connect(asyncpg_dsn(scratch_db))
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE audit IN EXCLUSIVE MODE")
        in_flight = [asyncio.create_task(post_audit(api, n)) for n in range(10)]
        try:
            await _waiting_on_lock(scratch_db, 10)
            api.process.signal(signal.SIGTERM)
            await asyncio.sleep(1.0)
            assert api.process.alive(), api.process.output()  # draining, not gone
            async with httpx.AsyncClient(timeout=2) as fresh:
                with pytest.raises(httpx.TransportError):  # no longer accepting
                    await fresh.get(f"{api.base_url}/health/live")
        finally:
            await transaction.rollback()
            await blocker.close()
        accepted = await asyncio.gather(*in_flight)
        # uvicorn re-raises the signal once it has shut down cleanly: "terminated by SIGTERM".
        exit_code = await api.process.exit_code(within=30)
        assert exit_code in (0, -signal.SIGTERM), api.process.output()
        assert api.process.events()[-1]["event"].startswith("Finished server process")
        assert set(accepted) == set(await audits(scratch_db))
        write_figures(
            "sigterm_api",
            {"requests_in_flight": 10, "answered_202": len(accepted), "lost": 0},
        )


async def test_workers_outlive_redis_restarts_and_lose_nothing(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    restarts = 4
    with simulator_process(tmp_path, latency_ms="100..600") as sim:
        stack = Stack(
            stack_env(database_url=scratch_db, redis_url=own_redis.url, simulator=sim), tmp_path
        )
        stacks.append(stack)
        api = await stack.start_web()
        workers = [stack.start_worker(), stack.start_worker()]
        run = FaultRun("redis_restarts", stack, api, sim, scratch_db)
        run.submit(400, clients=10, pause_s=0.5)
        await run.running(10)
        for _ in range(restarts):
            await own_redis.restart(down_for=2.0)
            run.infrastructure["redis_restart_empty"] += 1
            await asyncio.sleep(3.0)
            assert all(w.alive() for w in workers), stack.outputs()
        outcome = await run.settle(within=300)
        survived = [e for e in stack.worker_events() if e.get("event") == "redis_unavailable"]
        run.record(
            outcome,
            {"audits": 400, "workers": 2, "redis_outage_s": 2.0},
            redis_errors_survived_in_poll_loop=len(survived),
        )
        assert_promises_kept(run, outcome, submitted=400, min_succeeded_pct=100.0)
        assert all(w.alive() for w in workers), stack.outputs()


async def test_a_worker_keeps_the_answers_it_got_while_postgres_restarts(
    tmp_path: Path,
    own_postgres: OwnPostgres,
    own_scratch_db: str,
    own_redis: OwnRedis,
    stacks: list[Stack],
) -> None:
    with simulator_process(tmp_path, latency_ms="1500") as sim:
        env = stack_env(
            database_url=own_scratch_db,
            redis_url=own_redis.url,
            simulator=sim,
            WORKER_CONCURRENCY="10",
        )
        stack = Stack(env, tmp_path)
        stacks.append(stack)
        api = await stack.start_web()
        submitted = [await post_audit(api, n) for n in range(10)]
        worker = stack.start_worker()
        await model_requests(sim, 10)

        # The answers arrive while PostgreSQL is down: the finish writes must wait for it.
        await own_postgres.restart(down_for=3.0)
        await wait_until_settled(own_scratch_db, within=120)

        final = await audits(own_scratch_db)
        assert {final[i] for i in submitted} == {("succeeded", 1)}, worker.output()
        assert sim.stats()["requests"] == 10  # no answer thrown away and asked again
        assert set(finishes(worker.events()).values()) == {1}
        retried = [e for e in worker.events() if e.get("event") == "finish_write_retry"]
        assert retried, worker.output()
        assert worker.alive(), worker.output()
        write_figures(
            "postgres_restart_finish_writes",
            {
                "audits_submitted": 10,
                "answers_arriving_while_down": 10,
                "finish_write_retries": len(retried),
                "succeeded_first_attempt": 10,
                "model_requests": sim.stats()["requests"],
                "lost": 0,
                "duplicated": 0,
                "postgres_outage_s": 3.0,
            },
        )


async def arq_check(env: dict[str, str]) -> int:
    """`arq --check worker.settings.WorkerSettings`, as compose.yaml's health check runs it."""
    process = await asyncio.create_subprocess_exec(
        "arq",
        "--check",
        "worker.settings.WorkerSettings",
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return await asyncio.wait_for(process.wait(), 60)


async def until_check(env: dict[str, str], healthy: bool, *, within: float) -> float:
    """Seconds until `arq --check` says `healthy`; fails at the deadline."""
    started = time.monotonic()
    while (await arq_check(env) == 0) != healthy:
        if time.monotonic() - started > within:
            raise AssertionError(f"arq --check did not say healthy={healthy} within {within}s")
        await asyncio.sleep(1.0)
    return time.monotonic() - started


async def readiness(api: Api) -> tuple[int, dict[str, str]]:
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.get(f"{api.base_url}/health/ready")
    checks: dict[str, str] = response.json()["checks"]
    return response.status_code, {name: state.split(":")[0] for name, state in checks.items()}


async def test_readiness_and_the_worker_check_say_what_is_down(
    tmp_path: Path,
    own_postgres: OwnPostgres,
    own_scratch_db: str,
    own_redis: OwnRedis,
    stacks: list[Stack],
) -> None:
    with simulator_process(tmp_path) as sim:
        stack = Stack(
            stack_env(database_url=own_scratch_db, redis_url=own_redis.url, simulator=sim),
            tmp_path,
        )
        stacks.append(stack)
        api = await stack.start_web()
        worker = stack.start_worker()
        up = {"database": "ok", "redis": "ok"}
        assert await readiness(api) == (200, up)
        await until_check(stack.env, healthy=True, within=30)

        own_redis.stop()
        assert await readiness(api) == (503, {"database": "ok", "redis": "down"})
        await until_check(stack.env, healthy=False, within=30)
        own_redis.start()
        assert await readiness(api) == (200, up)
        await until_check(stack.env, healthy=True, within=40)  # the worker's next beat

        own_postgres.stop()
        assert await readiness(api) == (503, {"database": "down", "redis": "ok"})
        own_postgres.start()
        assert await readiness(api) == (200, up)
        assert worker.alive(), worker.output()

        worker.signal(signal.SIGKILL)
        gone_after = await until_check(stack.env, healthy=False, within=40)
        write_figures(
            "health_checks",
            {
                "ready_503_names": ["redis", "database"],
                "arq_check_after_sigkill_s": round(gone_after, 1),
                "health_check_interval_s": worker_options(Settings())["health_check_interval"],
            },
        )
