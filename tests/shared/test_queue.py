"""`enqueue_runs`: the jobs arq's `enqueue_job` would make, in one script, against real Redis.

arq is pinned below its next minor because `enqueue_runs` writes arq's job format itself:
`test_enqueue_runs_writes_the_job_arq_enqueue_job_writes` is what an upgrade must pass.
The job waits in the fair queue; the worker's pick adds it to arq's queue, due at once,
as `enqueue_job` would have.
"""

import pickle
from typing import Any, NamedTuple
from uuid import uuid4

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix
from arq.jobs import Job, JobStatus, deserialize_job
from arq.utils import timestamp_ms

from shared.config import Settings
from shared.fair_queue import waiting_jobs
from shared.queue import RUN_AUDIT, audit_job_id, enqueue_runs
from tests.fixtures.jobs import pick, single_run


class WrittenJob(NamedTuple):
    keys: set[str]
    fields: dict[str, Any]
    score: float | None
    ttl_ms: int
    status: JobStatus


async def written_job(redis: ArqRedis, queue_name: str, job_id: str) -> WrittenJob:
    """What Redis holds for one job: every key naming it, its fields, its queue score."""
    job_key = job_key_prefix + job_id
    raw = await redis.get(job_key)
    assert raw is not None
    return WrittenJob(
        keys={key.decode() for key in await redis.keys(f"arq:*{job_id}*")},
        fields=pickle.loads(raw),  # arq's default serializer, which both writers use
        score=await redis.zscore(queue_name, job_id),
        ttl_ms=await redis.pttl(job_key),
        status=await Job(job_id, redis, _queue_name=queue_name).status(),
    )


async def test_enqueue_runs_writes_the_job_arq_enqueue_job_writes(
    redis: ArqRedis, settings: Settings
) -> None:
    audit_id = uuid4()
    job_id = audit_job_id(audit_id)
    await redis.enqueue_job(RUN_AUDIT, str(audit_id), _job_id=job_id)
    by_arq = await written_job(redis, settings.queue_name, job_id)
    await redis.delete(job_key_prefix + job_id)
    await redis.zrem(settings.queue_name, job_id)

    await enqueue_runs(redis, [single_run(audit_id)])
    waiting = await written_job(redis, settings.queue_name, job_id)
    picked = await pick(redis, settings, limit=1)
    ours = await written_job(redis, settings.queue_name, job_id)

    assert waiting.score is None
    assert await waiting_jobs(redis, settings.queue_name) == []
    assert picked == [job_id]
    assert ours.keys == {job_key_prefix + job_id, in_progress_key_prefix + job_id}
    assert by_arq.keys == {job_key_prefix + job_id}
    assert by_arq.status == JobStatus.queued
    assert ours.status == JobStatus.in_progress
    # The same fields with the same values; the enqueue time differs by when each ran.
    assert {**ours.fields, "et": 0} == {**by_arq.fields, "et": 0}
    # Due at once: the queue score is the enqueue (for ours, the pick) time, in ms.
    assert ours.score is not None
    assert ours.fields["et"] <= ours.score <= timestamp_ms()
    assert by_arq.score == by_arq.fields["et"]
    # Both job keys expire after arq's `expires_extra_ms` (a day); the bound allows for
    # however long the test took.
    for job in (by_arq, ours):
        assert redis.expires_extra_ms / 2 < job.ttl_ms <= redis.expires_extra_ms


async def test_jobs_are_queued_once_with_no_abort_mark_even_after_a_script_flush(
    redis: ArqRedis, settings: Settings
) -> None:
    first, second = uuid4(), uuid4()
    await redis.zadd(abort_jobs_ss, {audit_job_id(first): 1})
    await enqueue_runs(redis, [single_run(first)])
    await redis.script_flush()  # as a Redis restart leaves it: the script must be loaded again
    await enqueue_runs(redis, [single_run(first), single_run(second)])

    queued = await waiting_jobs(redis, settings.queue_name)
    assert queued == [audit_job_id(first), audit_job_id(second)]
    assert await redis.zscore(abort_jobs_ss, audit_job_id(first)) is None
    job = deserialize_job(await redis.get(job_key_prefix + audit_job_id(second)))
    assert (job.function, job.args) == (RUN_AUDIT, (str(second),))
