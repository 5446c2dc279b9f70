"""The Procfile's worker (worker/runner.py): jobs started as arq would, in one round trip a poll."""

import asyncio
import inspect
from typing import Any
from uuid import UUID

import pytest
from arq import Worker
from arq.connections import ArqRedis
from arq.constants import in_progress_key_prefix
from arq.utils import timestamp_ms
from httpx import AsyncClient

from shared.config import Settings
from shared.fair_queue import wake_channel
from shared.queue import audit_job_id
from tests.fixtures.jobs import forget_job
from tests.fixtures.polling import eventually
from tests.fixtures.simulator import SimulatorHandle
from tests.worker.conftest import (
    WORKER_DEADLINE_S,
    RunWorker,
    build_worker,
    close_worker,
    fetch,
    submit,
)
from worker.runner import RedisTolerantWorker

# The private parts of arq's `Worker` that `RedisTolerantWorker` overrides or calls, as arq
# 0.28 has them. arq is pinned below its next minor for them: an upgrade that changes one
# fails here, before a worker relies on it.
ARQ_METHODS = {
    "_poll_iteration": ("(self) -> None", True),
    "_release_sem_dec_counter_on_complete": ("(self) -> None", False),
    "start_jobs": ("(self, job_ids: list[bytes]) -> None", True),
    "close": ("(self) -> None", True),
    "run_job": ("(self, job_id: str, score: int) -> None", True),
}
ARQ_ATTRIBUTES = (
    "allow_pick_jobs",
    "burst",
    "in_progress_timeout_s",
    "job_counter",
    "loop",
    "max_burst_jobs",
    "max_jobs",
    "poll_delay_s",
    "pool",
    "queue_name",
    "queue_read_limit",
    "sem",
    "tasks",
)


@pytest.mark.parametrize(("name", "expected"), ARQ_METHODS.items())
def test_the_arq_methods_the_worker_overrides_are_as_it_expects(
    name: str, expected: tuple[str, bool]
) -> None:
    method = getattr(Worker, name)
    assert (str(inspect.signature(method)), inspect.iscoroutinefunction(method)) == expected


def test_the_arq_worker_state_the_worker_uses_is_there(
    worker_settings: Settings, redis: ArqRedis
) -> None:
    worker = tolerant_worker(worker_settings, redis)

    assert [name for name in ARQ_ATTRIBUTES if not hasattr(worker, name)] == []
    assert isinstance(worker.sem, asyncio.BoundedSemaphore)
    assert isinstance(worker.tasks, dict)


def tolerant_worker(settings: Settings, redis: ArqRedis, **overrides: Any) -> RedisTolerantWorker:
    worker = build_worker(settings, RedisTolerantWorker, redis_pool=redis, **overrides)
    assert isinstance(worker, RedisTolerantWorker)
    return worker


async def cancel_all(worker: RedisTolerantWorker) -> None:
    for task in worker.tasks.values():
        task.cancel()
    await asyncio.gather(*worker.tasks.values(), return_exceptions=True)


async def test_the_procfile_worker_runs_a_submitted_audit(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    submitted = await submit(client)

    await run_worker(worker_class=RedisTolerantWorker)

    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("succeeded", 1)
    assert sim.stats()["requests"] == 1


async def test_a_due_job_is_marked_in_progress_as_it_starts(
    client: AsyncClient, worker_settings: Settings, redis: ArqRedis
) -> None:
    job_id = audit_job_id(UUID((await submit(client))["id"]))
    worker = tolerant_worker(worker_settings, redis)

    await worker.start_jobs([job_id.encode()])

    assert list(worker.tasks) == [job_id]
    ttl_ms = await redis.pttl(in_progress_key_prefix + job_id)
    assert 0 < ttl_ms <= worker.in_progress_timeout_s * 1000
    await cancel_all(worker)


@pytest.mark.parametrize("case", ["in progress elsewhere", "deferred", "no longer queued"])
async def test_a_job_that_must_not_start_is_skipped_and_its_slot_freed(
    client: AsyncClient, worker_settings: Settings, redis: ArqRedis, case: str
) -> None:
    job_id = audit_job_id(UUID((await submit(client))["id"]))
    if case == "in progress elsewhere":
        await redis.psetex(in_progress_key_prefix + job_id, 60_000, b"1")
    elif case == "deferred":
        await redis.zadd(worker_settings.queue_name, {job_id: timestamp_ms() + 60_000})
    else:
        await forget_job(redis, worker_settings, job_id)
    worker = tolerant_worker(worker_settings, redis)
    free_slots = worker.sem._value

    await worker.start_jobs([job_id.encode()])

    assert worker.tasks == {}
    assert (worker.job_counter, worker.sem._value) == (0, free_slots)
    if case != "in progress elsewhere":
        assert await redis.exists(in_progress_key_prefix + job_id) == 0


async def test_only_as_many_jobs_start_as_there_are_free_slots(
    client: AsyncClient, worker_settings: Settings, redis: ArqRedis
) -> None:
    job_ids = [audit_job_id(UUID((await submit(client))["id"])) for _ in range(3)]
    worker = tolerant_worker(worker_settings, redis, max_jobs=2)

    await worker.start_jobs([job_id.encode() for job_id in job_ids])

    try:
        assert (list(worker.tasks), worker.job_counter) == (job_ids[:2], 2)
        assert await redis.exists(in_progress_key_prefix + job_ids[2]) == 0
    finally:
        await cancel_all(worker)


async def test_a_job_running_here_is_not_started_again(
    client: AsyncClient, worker_settings: Settings, redis: ArqRedis
) -> None:
    job_id = audit_job_id(UUID((await submit(client))["id"]))
    worker = tolerant_worker(worker_settings, redis)
    await worker.start_jobs([job_id.encode()])
    running = worker.tasks[job_id]

    await worker.start_jobs([job_id.encode()])

    try:
        assert (worker.tasks, worker.job_counter) == ({job_id: running}, 1)
    finally:
        await cancel_all(worker)


async def test_a_freed_slot_is_refilled_without_waiting_for_the_next_poll(
    client: AsyncClient, run_worker: RunWorker
) -> None:
    submitted = [await submit(client) for _ in range(3)]
    # One slot, and a poll delay longer than the run's deadline: only the refill on a
    # finished job can start the second and third audits in time.
    await run_worker(
        worker_class=RedisTolerantWorker, max_jobs=1, poll_delay=10 * WORKER_DEADLINE_S
    )

    statuses = [(await fetch(client, audit["id"]))["status"] for audit in submitted]
    assert statuses == ["succeeded"] * 3


async def test_an_idle_worker_starts_a_submitted_audit_without_waiting_for_its_poll(
    client: AsyncClient, worker_settings: Settings, redis: ArqRedis
) -> None:
    # A poll delay longer than the test's wait: only the wake on enqueue starts it in time.
    worker = tolerant_worker(worker_settings, redis, burst=False, poll_delay=60)
    running = asyncio.create_task(worker.main())
    try:
        channel = wake_channel(worker_settings.queue_name)
        await eventually(lambda: redis.pubsub_numsub(channel), lambda n: n[0][1] == 1)
        submitted = await submit(client)

        done = await eventually(
            lambda: fetch(client, submitted["id"]), lambda a: a["status"] == "succeeded"
        )
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await close_worker(worker)

    assert done["attempts"] == 1
