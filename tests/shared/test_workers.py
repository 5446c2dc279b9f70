"""Worker heartbeats: alive while the last beat is under 30 s old."""

import asyncio
import time

from arq.connections import ArqRedis

from shared import workers
from shared.config import Settings


async def test_a_worker_is_alive_while_it_beats(redis: ArqRedis, settings: Settings) -> None:
    queue = settings.queue_name
    assert await workers.alive(redis, queue) == 0

    await workers.beat(redis, queue, "host:1:a")
    await workers.beat(redis, queue, "host:2:b")
    await workers.beat(redis, queue, "host:2:b")  # a worker counts once

    assert await workers.alive(redis, queue) == 2
    await workers.leave(redis, queue, "host:1:a")
    assert await workers.alive(redis, queue) == 1


async def test_a_worker_silent_for_30_s_is_not_alive(redis: ArqRedis, settings: Settings) -> None:
    queue = settings.queue_name
    stale = time.time() - workers.ALIVE_FOR_S - 1
    await redis.zadd(f"{queue}:workers", {"host:9:killed": stale})
    await workers.beat(redis, queue, "host:1:a")

    assert await workers.alive(redis, queue) == 1


def test_worker_ids_name_the_process_and_never_repeat() -> None:
    ids = {workers.new_worker_id() for _ in range(100)}
    assert len(ids) == 100


async def test_beating_stops_when_cancelled_whenever_the_cancel_comes(
    redis: ArqRedis, settings: Settings
) -> None:
    # However far the first beat has gone: connecting, sending, reading the reply.
    for steps in range(40):
        beating = asyncio.create_task(workers.beat_forever(redis, settings.queue_name, "h:1:a"))
        for _ in range(steps):
            await asyncio.sleep(0)
        beating.cancel()

        done, _ = await asyncio.wait([beating], timeout=2)

        assert done == {beating}, f"still beating after a cancel {steps} steps in"
        assert beating.cancelled()
