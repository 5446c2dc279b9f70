"""`enqueue_runs`: the jobs arq's `enqueue_job` would make, in one script, against real Redis."""

from uuid import uuid4

from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.jobs import deserialize_job

from shared.config import Settings
from shared.queue import RUN_AUDIT, audit_job_id, enqueue_runs


async def test_jobs_are_queued_once_with_no_abort_mark_even_after_a_script_flush(
    redis: ArqRedis, settings: Settings
) -> None:
    first, second = uuid4(), uuid4()
    await redis.zadd(abort_jobs_ss, {audit_job_id(first): 1})
    await enqueue_runs(redis, [first])
    await redis.script_flush()  # as a Redis restart leaves it: the script must be loaded again
    await enqueue_runs(redis, [first, second])

    queued = {member.decode() for member in await redis.zrange(settings.queue_name, 0, -1)}
    assert queued == {audit_job_id(first), audit_job_id(second)}
    assert await redis.zscore(abort_jobs_ss, audit_job_id(first)) is None
    job = deserialize_job(await redis.get(job_key_prefix + audit_job_id(second)))
    assert (job.function, job.args) == (RUN_AUDIT, (str(second),))
