"""Crashes, shutdowns and a lost Redis, with real worker processes: no audit is lost or run twice.

Workers run as `python -m worker` (the Procfile's), configured from the
environment as in production. A small `OPENAI_TIMEOUT_S` keeps the job timeout, the lease
and arq's re-delivery of a killed worker's job short (worker/timing.py).
"""

import asyncio
import os
import signal
import sys
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from httpx import AsyncClient
from sqlmodel import col

from shared.audits.models import Audit
from shared.audits.status import TERMINAL
from shared.config import Settings
from shared.db import SessionFactory, session_scope
from shared.queue import audit_job_id
from tests.fixtures.polling import eventually
from tests.fixtures.processes import Process, simulator_process
from tests.fixtures.simulator import SimulatorHandle
from tests.rows import load_audit
from tests.worker.conftest import (
    RunWorker,
    build_worker,
    close_worker,
    model_called,
    submit,
)
from worker.reconciler import ORPHAN_AGE
from worker.timing import JobTiming

# The killed worker's call must still be in flight when the kill lands: it hangs for T.
KILL_TIMEOUT_S = 2.0
SLOW_LATENCY_MS = 3000
SLOW_TIMEOUT_S = 6.0


class Workers:
    """Starts worker processes for a test, configured like a deployment, and reaps them."""

    def __init__(self, settings: Settings, tmp_path: Path) -> None:
        self.settings = settings
        self.tmp_path = tmp_path
        self.started: list[Process] = []

    def start(self, *, base_url: str, timeout_s: float, **env: str) -> Process:
        variables = {
            **os.environ,
            "DATABASE_URL": self.settings.database_url,
            "REDIS_URL": self.settings.redis_url,
            "QUEUE_NAME": self.settings.queue_name,
            "OPENAI_BASE_URL": base_url,
            "OPENAI_TIMEOUT_S": str(timeout_s),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        argv = [sys.executable, "-m", "worker"]
        worker = Process(f"worker-{len(self.started)}", argv, variables, self.tmp_path)
        self.started.append(worker)
        return worker

    def stop_all(self) -> None:
        for worker in self.started:
            worker.stop()


@pytest.fixture
def workers(settings: Settings, tmp_path: Path) -> Iterator[Workers]:
    started = Workers(settings, tmp_path)
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def slow_simulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatorHandle]:
    """The bundled simulator as `auditq simulator` runs it, answering after SLOW_LATENCY_MS."""
    with simulator_process(
        tmp_path_factory.mktemp("simulator"), latency_ms=str(SLOW_LATENCY_MS)
    ) as handle:
        yield handle


@pytest.fixture
def slow_sim(slow_simulator: SimulatorHandle) -> SimulatorHandle:
    slow_simulator.reset()
    return slow_simulator


async def audit_status(factory: SessionFactory, audit_id: str) -> tuple[str, int]:
    audit = await load_audit(factory, audit_id)
    return audit.status, audit.attempts


async def wait_until_terminal(
    factory: SessionFactory, audit_id: str, *, within: float, worker: Process
) -> Audit:
    async def load() -> Audit:
        return await load_audit(factory, audit_id)

    try:
        return await eventually(load, lambda a: a.status in TERMINAL, timeout=within)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{worker.output()}") from None


async def count_by_status(factory: SessionFactory) -> dict[str, int]:
    async with factory() as session:
        stmt = sa.select(col(Audit.status), sa.func.count()).group_by(col(Audit.status))
        rows = (await session.execute(stmt)).all()
    return dict(rows)


async def age_queued_audits(factory: SessionFactory, *, by: timedelta) -> None:
    async with session_scope(factory) as session:
        stmt = (
            sa.update(Audit)
            .where(col(Audit.status) == "queued")
            .values(updated_at=col(Audit.updated_at) - by)
        )
        await session.execute(stmt)


def snapshot(audit: Audit) -> dict[str, Any]:
    return audit.model_dump()


async def test_a_worker_killed_mid_job_is_replaced_and_the_audit_succeeds_once(
    client: AsyncClient,
    sim: SimulatorHandle,
    workers: Workers,
    session_factory: SessionFactory,
    redis: ArqRedis,
    settings: Settings,
) -> None:
    sim.script(["hang", "ok"])
    submitted = await submit(client)
    first = workers.start(base_url=sim.base_url, timeout_s=KILL_TIMEOUT_S)
    await model_called(sim, within=30)

    # The replacement starts meanwhile: arq's in-progress key keeps it off the job for now.
    second = workers.start(base_url=sim.base_url, timeout_s=KILL_TIMEOUT_S)
    first.signal(signal.SIGKILL)
    assert await first.exit_code(within=10) == -signal.SIGKILL
    # It died holding the audit: still running, in its first attempt, under its lease.
    assert await audit_status(session_factory, submitted["id"]) == ("running", 1)

    timing = JobTiming.from_settings(
        settings.model_copy(update={"openai_timeout_s": KILL_TIMEOUT_S})
    )
    done = await wait_until_terminal(
        session_factory, submitted["id"], within=timing.job_timeout_s + 40, worker=second
    )

    assert (done.status, done.attempts) == ("succeeded", 2), second.output()
    assert sim.stats() == {"requests": 2, "outcomes": {"hang": 1, "ok": 1}}
    assert done.finished_at is not None
    assert done.updated_at == done.finished_at  # the terminal write was its last write
    second.signal(signal.SIGTERM)
    assert await second.exit_code(within=30) == 0, second.output()
    assert await redis.zscore(settings.queue_name, audit_job_id(done.id)) is None
    assert snapshot(await load_audit(session_factory, submitted["id"])) == snapshot(done)


async def test_sigterm_lets_the_running_audit_finish(
    client: AsyncClient,
    slow_sim: SimulatorHandle,
    workers: Workers,
    session_factory: SessionFactory,
) -> None:
    submitted = await submit(client)
    worker = workers.start(base_url=slow_sim.base_url, timeout_s=SLOW_TIMEOUT_S)
    await model_called(slow_sim, within=30)
    assert await audit_status(session_factory, submitted["id"]) == ("running", 1)

    worker.signal(signal.SIGTERM)

    assert await worker.exit_code(within=30) == 0, worker.output()
    audit = await load_audit(session_factory, submitted["id"])
    assert (audit.status, audit.attempts) == ("succeeded", 1), worker.output()
    assert slow_sim.stats()["requests"] == 1


async def test_a_job_cut_off_by_shutdown_is_handed_back_and_run_again(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_settings: Settings,
    run_worker: RunWorker,
    session_factory: SessionFactory,
) -> None:
    # What arq does once `job_completion_wait` has passed after a SIGTERM.
    sim.script(["hang", "ok"])
    submitted = await submit(client)
    worker = build_worker(worker_settings, burst=False, job_completion_wait=1)
    worker.main_task = main = asyncio.create_task(worker.main())
    await model_called(sim)

    worker.handle_sig_wait_for_completion(signal.SIGTERM)
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(main, 10)
    # As `arq` does after a signal: let the cancelled jobs wind up, then close.
    await asyncio.wait_for(asyncio.gather(*worker.tasks.values()), 10)
    await close_worker(worker)

    assert await audit_status(session_factory, submitted["id"]) == ("queued", 1)
    await run_worker()
    assert await audit_status(session_factory, submitted["id"]) == ("succeeded", 2)
    assert sim.stats() == {"requests": 2, "outcomes": {"hang": 1, "ok": 1}}


async def test_audits_survive_a_redis_flush_while_a_worker_runs(
    client: AsyncClient,
    slow_sim: SimulatorHandle,
    workers: Workers,
    session_factory: SessionFactory,
    redis: ArqRedis,
) -> None:
    submitted = [await submit(client, subject=f"Page {n}") for n in range(4)]
    worker = workers.start(
        base_url=slow_sim.base_url, timeout_s=SLOW_TIMEOUT_S, WORKER_CONCURRENCY="2"
    )

    async def counts() -> dict[str, int]:
        return await count_by_status(session_factory)

    await eventually(counts, lambda c: c.get("running") == 2, timeout=30)
    await redis.flushdb()  # the running jobs, the queued ones and the cron's locks: all gone
    # As if ORPHAN_AGE had passed, so the next run of the cron (every 15 s) finds them.
    await age_queued_audits(session_factory, by=ORPHAN_AGE)

    # The running audits finish on their own; the reconciler cron enqueues the others.
    await eventually(counts, lambda c: c.get("succeeded") == 4, timeout=45)

    for audit in submitted:
        assert await audit_status(session_factory, audit["id"]) == ("succeeded", 1)
    assert slow_sim.stats()["requests"] == 4
    worker.signal(signal.SIGTERM)
    assert await worker.exit_code(within=30) == 0, worker.output()
