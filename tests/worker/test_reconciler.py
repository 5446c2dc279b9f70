"""The reconciler: queued audits without a job and abandoned running ones are never lost."""

from datetime import timedelta
from uuid import UUID

import pytest
from arq.connections import ArqRedis
from httpx import AsyncClient

from shared.audits.recovery import WORKER_LOST
from shared.config import Settings
from shared.db import SessionFactory
from shared.fair_queue import waiting_jobs
from shared.queue import audit_job_id, enqueue_runs
from tests.fixtures.jobs import forget_job, queued_job_ids, single_run
from tests.fixtures.simulator import SimulatorHandle
from tests.rows import ago, load_audit, running_audit
from tests.worker.conftest import RunWorker, fetch, submit
from worker.context import JobContext
from worker.reconciler import reconcile


@pytest.fixture
def no_orphan_age(monkeypatch: pytest.MonkeyPatch) -> None:
    """Queued audits count as orphans as soon as they have no job."""
    monkeypatch.setattr("worker.reconciler.ORPHAN_AGE", timedelta(0))


async def queued_jobs(redis: ArqRedis, settings: Settings) -> list[str]:
    return sorted(await queued_job_ids(redis, settings))


def job_ids(*audit_ids: str | UUID) -> list[str]:
    return sorted(audit_job_id(UUID(str(i))) for i in audit_ids)


@pytest.mark.usefixtures("no_orphan_age")
async def test_audits_whose_jobs_redis_lost_are_enqueued_and_run(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_ctx: JobContext,
    run_worker: RunWorker,
    redis: ArqRedis,
    worker_settings: Settings,
) -> None:
    submitted = [await submit(client, subject=f"Page {n}") for n in range(3)]
    await redis.flushdb()  # a Redis restart without persistence

    counts = await reconcile(worker_ctx)

    assert counts == {"leases_requeued": 0, "leases_failed": 0, "orphans": 3, "tenants_released": 0}
    assert await queued_jobs(redis, worker_settings) == job_ids(*(a["id"] for a in submitted))
    await run_worker()
    for audit in submitted:
        done = await fetch(client, audit["id"])
        assert (done["status"], done["attempts"]) == ("succeeded", 1)
    assert sim.stats()["requests"] == 3


@pytest.mark.usefixtures("no_orphan_age")
async def test_audits_that_still_have_a_job_are_left_to_it(
    client: AsyncClient, worker_ctx: JobContext, redis: ArqRedis, worker_settings: Settings
) -> None:
    kept = await submit(client)
    lost = await submit(client)
    await forget_job(redis, worker_settings, audit_job_id(UUID(lost["id"])))

    first = await reconcile(worker_ctx)
    second = await reconcile(worker_ctx)

    assert first["orphans"] == 1
    assert second["orphans"] == 0  # the job it enqueued is there now
    assert await queued_jobs(redis, worker_settings) == job_ids(kept["id"], lost["id"])


async def test_young_queued_audits_are_left_to_the_api_that_enqueues_them(
    client: AsyncClient, worker_ctx: JobContext, redis: ArqRedis, worker_settings: Settings
) -> None:
    # Between the API's commit and its enqueue an audit has no job yet: not an orphan.
    await submit(client)
    await redis.flushdb()

    counts = await reconcile(worker_ctx)

    assert counts["orphans"] == 0
    assert await queued_jobs(redis, worker_settings) == []


async def test_expired_leases_are_requeued_or_failed_on_their_last_attempt(
    sim: SimulatorHandle,
    worker_ctx: JobContext,
    run_worker: RunWorker,
    session_factory: SessionFactory,
    redis: ArqRedis,
    worker_settings: Settings,
) -> None:
    abandoned = await running_audit(session_factory, attempts=1, attempt_limit=3, lease_s=-1)
    last = await running_audit(session_factory, attempts=3, attempt_limit=3, lease_s=-1)
    alive = await running_audit(session_factory, attempts=1, lease_s=60)

    counts = await reconcile(worker_ctx)

    assert counts == {"leases_requeued": 1, "leases_failed": 1, "orphans": 0, "tenants_released": 0}
    assert await queued_jobs(redis, worker_settings) == job_ids(abandoned)
    lost = await load_audit(session_factory, last)
    assert (lost.status, lost.error_code, lost.attempts) == ("failed", WORKER_LOST, 3)
    assert lost.finished_at is not None
    assert (await load_audit(session_factory, alive)).status == "running"

    await run_worker()

    done = await load_audit(session_factory, abandoned)
    assert (done.status, done.attempts) == ("succeeded", 2)
    assert (await load_audit(session_factory, last)).status == "failed"
    assert (await load_audit(session_factory, alive)).status == "running"
    assert sim.stats()["requests"] == 1


async def test_an_expired_lease_with_its_job_still_in_redis_is_not_enqueued_twice(
    worker_ctx: JobContext,
    session_factory: SessionFactory,
    redis: ArqRedis,
    worker_settings: Settings,
) -> None:
    # A killed worker's job stays in the queue until arq re-delivers it.
    audit_id = await running_audit(session_factory, attempts=1, lease_s=-1, updated_at=ago(60))
    await enqueue_runs(redis, [single_run(audit_id)])
    before = await waiting_jobs(redis, worker_settings.queue_name)

    counts = await reconcile(worker_ctx)

    assert counts["leases_requeued"] == 1
    assert await waiting_jobs(redis, worker_settings.queue_name) == before


@pytest.mark.usefixtures("no_orphan_age")
async def test_a_backlog_longer_than_one_scan_is_covered_over_several_runs(
    client: AsyncClient,
    worker_ctx: JobContext,
    redis: ArqRedis,
    worker_settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("worker.reconciler.SCAN_LIMIT", 2)
    submitted = [await submit(client, subject=f"Page {n}") for n in range(5)]
    await redis.flushdb()

    found = [(await reconcile(worker_ctx))["orphans"] for _ in range(3)]

    assert found == [2, 2, 1]
    assert await queued_jobs(redis, worker_settings) == job_ids(*(a["id"] for a in submitted))
