"""Worker heartbeats in Redis: how many workers are alive, without asking them.

Each worker process stamps its id with the time in the sorted set `<QUEUE_NAME>:workers`
every `BEAT_EVERY_S`. A worker is alive while its last beat is younger than
`ALIVE_FOR_S`: a killed one simply stops beating and drops out within 30 s; one that
stops cleanly takes itself out at once. Reading is one round trip, whatever the count.
"""

import asyncio
import os
import socket
import time
from uuid import uuid4

import structlog
from redis.asyncio import Redis
from redis.exceptions import RedisError

log = structlog.get_logger("auditq.workers")

BEAT_EVERY_S = 10.0
ALIVE_FOR_S = 30.0


def _key(queue_name: str) -> str:
    return f"{queue_name}:workers"


def new_worker_id() -> str:
    """`host:pid:random`: tells ops which process it is, and never repeats."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid4().hex[:6]}"


async def beat(redis: Redis, queue_name: str, worker_id: str) -> None:
    await redis.zadd(_key(queue_name), {worker_id: time.time()})


async def leave(redis: Redis, queue_name: str, worker_id: str) -> None:
    await redis.zrem(_key(queue_name), worker_id)


async def alive(redis: Redis, queue_name: str) -> int:
    """Workers whose last beat is younger than `ALIVE_FOR_S`; older beats are dropped."""
    oldest = time.time() - ALIVE_FOR_S
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(_key(queue_name), "-inf", f"({oldest}")
        pipe.zcard(_key(queue_name))
        _, count = await pipe.execute()
    return int(count)


async def alive_or_none(redis: Redis, queue_name: str, *, timeout_s: float) -> int | None:
    """`alive`, or None when Redis does not answer within `timeout_s`: a figure that
    cannot be read is left out, it does not fail what reports it."""
    try:
        return await asyncio.wait_for(alive(redis, queue_name), timeout_s)
    except (RedisError, OSError, TimeoutError):
        return None


async def beat_forever(redis: Redis, queue_name: str, worker_id: str) -> None:
    """Beat until cancelled; a Redis outage skips beats, it does not stop them."""
    while True:
        try:
            await beat(redis, queue_name, worker_id)
        except (RedisError, OSError) as exc:
            log.warning("heartbeat_missed", error=type(exc).__name__)
        _stop_if_cancelled()
        await asyncio.sleep(BEAT_EVERY_S)


def _stop_if_cancelled() -> None:
    """Raise the cancellation a Redis command swallowed.

    redis-py (5.3, on Python 3.11) may answer a command whose task was cancelled while
    it ran, and drop the cancellation: the loop would beat on, and a shutdown that waits
    for it would wait for ever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
