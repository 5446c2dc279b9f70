"""The fair queue's order and shares, against real Redis: the scripts pick, no worker runs.

Each pick starts one job (one free slot) unless a test says otherwise, so the order of
the returned ids is the order in which slots would be filled. No clock is involved but
`now_ms` for the due jobs of arq's queue.
"""

from uuid import UUID, uuid4

from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.utils import timestamp_ms

from shared.audits.priority import Priority
from shared.config import Settings
from shared.fair_queue import (
    QueuedRun,
    held_tenants,
    hold_tenant,
    queue_depths,
    release_tenant,
    set_weights,
    waiting_jobs,
)
from shared.queue import audit_job_id, enqueue_runs
from tests.fixtures.jobs import pick

INTERACTIVE, BULK = Priority.INTERACTIVE, Priority.BULK


def runs(count: int, *, tenant: str, priority: Priority, batch: UUID | None) -> list[QueuedRun]:
    return [QueuedRun(uuid4(), tenant, priority, batch) for _ in range(count)]


def job_of(run: QueuedRun) -> str:
    return audit_job_id(run.audit_id)


async def picks(redis: ArqRedis, settings: Settings, times: int) -> list[str]:
    """`times` picks of one slot each, in order."""
    return [job_id for _ in range(times) for job_id in await pick(redis, settings, limit=1)]


def count_of(picked: list[str], group: list[QueuedRun]) -> int:
    members = {job_of(run) for run in group}
    return sum(job_id in members for job_id in picked)


async def test_an_interactive_audit_goes_before_a_bulk_backlog(
    redis: ArqRedis, settings: Settings
) -> None:
    backlog = runs(50, tenant="a", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, backlog)
    await picks(redis, settings, 3)
    single = runs(1, tenant="b", priority=INTERACTIVE, batch=None)
    await enqueue_runs(redis, single)

    assert await picks(redis, settings, 1) == [job_of(single[0])]


async def test_bulk_keeps_its_share_while_interactive_work_waits(
    redis: ArqRedis, settings: Settings
) -> None:
    bulk = runs(100, tenant="a", priority=BULK, batch=uuid4())
    interactive = runs(100, tenant="b", priority=INTERACTIVE, batch=None)
    await enqueue_runs(redis, bulk + interactive)

    picked = await picks(redis, settings, 50)

    assert count_of(picked, bulk) == 50 * settings.bulk_min_share
    assert count_of(picked, interactive) == 50 * (1 - settings.bulk_min_share)


async def test_tenants_share_the_slots_by_weight(redis: ArqRedis, settings: Settings) -> None:
    await set_weights(redis, settings.queue_name, {"light": 1, "heavy": 3})
    light = runs(100, tenant="light", priority=BULK, batch=uuid4())
    heavy = runs(100, tenant="heavy", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, light + heavy)

    picked = await picks(redis, settings, 40)

    assert (count_of(picked, light), count_of(picked, heavy)) == (10, 30)


async def test_a_second_batch_takes_its_share_from_its_first_pick(
    redis: ArqRedis, settings: Settings
) -> None:
    first = runs(200, tenant="a", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, first)
    await picks(redis, settings, 20)
    second = runs(5, tenant="a", priority=BULK, batch=uuid4())
    singles = runs(5, tenant="a", priority=BULK, batch=None)
    await enqueue_runs(redis, second + singles)

    picked = await picks(redis, settings, 15)

    # Three flows of one tenant, each a third: the newcomers wait behind nothing.
    assert (count_of(picked, first), count_of(picked, second), count_of(picked, singles)) == (
        5,
        5,
        5,
    )


async def test_a_tenant_that_starts_waiting_joins_at_the_current_turn(
    redis: ArqRedis, settings: Settings
) -> None:
    early = runs(100, tenant="early", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, early)
    await picks(redis, settings, 60)  # alone: early's pass is far ahead of zero
    late = runs(10, tenant="late", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, late)

    picked = await picks(redis, settings, 20)

    # Neither credit for the past (all 10 at once) nor a wait behind early's 60 picks.
    assert count_of(picked, late) == 10
    assert [job_id in {job_of(r) for r in late} for job_id in picked[:4]].count(True) == 2


async def test_one_kind_of_work_alone_takes_every_slot(redis: ArqRedis, settings: Settings) -> None:
    bulk = runs(30, tenant="a", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, bulk)

    picked = await pick(redis, settings, limit=25)

    assert picked == [job_of(run) for run in bulk[:25]]
    assert await pick(redis, settings, limit=25) == [job_of(run) for run in bulk[25:]]
    assert await pick(redis, settings, limit=25) == []


async def test_a_job_queued_twice_waits_and_starts_once(
    redis: ArqRedis, settings: Settings
) -> None:
    run = runs(1, tenant="a", priority=INTERACTIVE, batch=None)
    await enqueue_runs(redis, run)
    await enqueue_runs(redis, run)

    assert await waiting_jobs(redis, settings.queue_name) == [job_of(run[0])]
    assert await pick(redis, settings, limit=5) == [job_of(run[0])]
    await enqueue_runs(redis, run)  # running: its key is there, so not queued again
    assert await waiting_jobs(redis, settings.queue_name) == []


async def test_a_stale_entry_is_dropped_and_its_slot_filled(
    redis: ArqRedis, settings: Settings
) -> None:
    lost, kept = runs(2, tenant="a", priority=BULK, batch=None)
    await enqueue_runs(redis, [lost, kept])
    await redis.delete(job_key_prefix + job_of(lost))  # as a flush of its key leaves it

    assert await pick(redis, settings, limit=1) == [job_of(kept)]


async def test_due_jobs_of_arqs_queue_start_before_the_fair_queue(
    redis: ArqRedis, settings: Settings
) -> None:
    waiting = runs(1, tenant="a", priority=INTERACTIVE, batch=None)
    retried, deferred = runs(2, tenant="a", priority=BULK, batch=None)
    await enqueue_runs(redis, [*waiting, retried, deferred])
    await pick(redis, settings, limit=3)
    # Their runs asked to be retried: back in arq's queue, one due, one later, not running.
    now = timestamp_ms()
    await redis.zadd(
        settings.queue_name, {job_of(retried): now - 1, job_of(deferred): now + 60_000}
    )
    await redis.delete(*(f"arq:in-progress:{job_of(r)}" for r in (retried, deferred)))
    more = runs(1, tenant="a", priority=INTERACTIVE, batch=None)
    await enqueue_runs(redis, more)
    due = [job_of(retried), job_of(deferred)]

    assert await pick(redis, settings, limit=1, now_ms=now, due=due) == [job_of(retried)]
    assert await pick(redis, settings, limit=1, now_ms=now, due=due) == [job_of(more[0])]


async def test_depth_per_priority_and_tenant_is_one_read(
    redis: ArqRedis, settings: Settings
) -> None:
    await enqueue_runs(redis, runs(3, tenant="a", priority=BULK, batch=uuid4()))
    await enqueue_runs(redis, runs(2, tenant="a", priority=INTERACTIVE, batch=None))
    await enqueue_runs(redis, runs(4, tenant="b", priority=BULK, batch=None))
    await picks(redis, settings, 3)  # both interactive and one bulk (of a or b)

    depths = await queue_depths(redis, settings.queue_name)

    assert sum(depths.values()) == 6
    assert (INTERACTIVE, "a") not in depths
    assert depths[(BULK, "a")] + depths[(BULK, "b")] == 6


# Tenants on hold (a spent monthly budget)


async def test_a_tenant_on_hold_is_not_picked_and_the_others_take_every_slot(
    redis: ArqRedis, settings: Settings
) -> None:
    spent = runs(5, tenant="spent", priority=BULK, batch=uuid4())
    other = runs(5, tenant="other", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, spent + other)
    await hold_tenant(redis, settings.queue_name, "spent")

    picked = await picks(redis, settings, 10)

    assert picked == [job_of(run) for run in other]
    assert await held_tenants(redis, settings.queue_name) == {"spent"}
    # Its jobs wait where they were, counted in the queue's depth.
    assert await queue_depths(redis, settings.queue_name) == {(BULK, "spent"): 5}


async def test_work_queued_for_a_tenant_on_hold_waits_until_it_is_released(
    redis: ArqRedis, settings: Settings
) -> None:
    await hold_tenant(redis, settings.queue_name, "spent")
    single = runs(2, tenant="spent", priority=INTERACTIVE, batch=None)
    batch = runs(2, tenant="spent", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, single + batch)
    assert await picks(redis, settings, 4) == []

    assert await release_tenant(redis, settings.queue_name, "spent") == 4

    picked = await picks(redis, settings, 4)
    assert sorted(picked) == sorted(job_of(run) for run in single + batch)
    assert await held_tenants(redis, settings.queue_name) == set()


async def test_a_released_tenant_does_not_jump_ahead_of_the_others(
    redis: ArqRedis, settings: Settings
) -> None:
    first = runs(20, tenant="a", priority=BULK, batch=uuid4())
    second = runs(20, tenant="b", priority=BULK, batch=uuid4())
    await enqueue_runs(redis, first + second)
    await picks(redis, settings, 4)
    await hold_tenant(redis, settings.queue_name, "a")
    await picks(redis, settings, 6)  # b alone, meanwhile

    await release_tenant(redis, settings.queue_name, "a")
    picked = await picks(redis, settings, 10)

    # Back in turn with b, as any tenant that starts waiting, at the pass of the last pick
    # (one ahead of b at most): no credit banked while on hold, which would give it all 10.
    assert count_of(picked, first) in (5, 6)
    assert count_of(picked, first) + count_of(picked, second) == 10
