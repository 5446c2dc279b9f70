"""Webhooks from the Procfile's processes, with a worker SIGKILLed mid-run.

400 audits (single audits and batches, a third of the batches with `item_events`), every
one with a `callback_url` to a receiver on loopback that fails 30% of the tries at random
and takes 50 ms to answer, so that tries are in flight whenever the kill comes. The bar:
every terminal audit and every completed batch reaches the receiver, exactly the events
the contract names, each correctly signed (checked with `standardwebhooks`); a retried
event keeps its `webhook-id`; the audits themselves keep every promise of the other runs.
"""

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from shared.webhooks.signing import new_secret
from tests.faults.load import Submission, plan
from tests.faults.outcome import query
from tests.faults.scenario import FaultRun, assert_promises_kept, stack_env
from tests.faults.services import OwnRedis
from tests.faults.stack import Stack
from tests.fixtures.processes import simulator_process
from tests.fixtures.receiver import Answer, Receiver, Try, receiving

pytestmark = pytest.mark.slow

AUDITS = 400
CLIENTS = 20
CLIENT_PAUSE_S = 0.5
FAILING_SHARE = 0.3
RECEIVER_DELAY_S = 0.05
SECRET = new_secret()
# A try a killed worker had in flight comes back after its lease (30 s), then backs off.
DELIVERED_WITHIN_S = 240.0


@dataclass(frozen=True)
class WithCallback(Submission):
    callback_url: str = ""
    item_events: bool = False

    def body(self) -> dict[str, Any]:
        body = {**super().body(), "callback_url": self.callback_url}
        if self.batch:
            body["item_events"] = self.item_events
        return body


def with_callbacks(submissions: list[Submission], url: str) -> list[Submission]:
    """The plan's requests, each with the callback; every third batch with item events."""
    batches = 0
    made: list[Submission] = []
    for item in submissions:
        batches += item.batch
        made.append(
            WithCallback(
                audits=item.audits,
                batch=item.batch,
                key=item.key,
                callback_url=url,
                item_events=item.batch and batches % 3 == 0,
            )
        )
    return made


def failing(share: float, *, seed: int) -> Answer:
    draw = random.Random(seed)
    return lambda webhook_id, nth: 503 if draw.random() < share else 204


async def expected_events(database_url: str) -> set[tuple[str, str]]:
    """(type, id) of every event the contract says the run must send."""
    audits = await query(
        database_url,
        "SELECT audit.id::text AS id, audit.status, audit.batch_id, batch.item_events "
        "FROM audit LEFT JOIN batch ON batch.id = audit.batch_id",
    )
    batches = await query(database_url, "SELECT id::text AS id FROM batch")
    return {
        *((f"audit.{a['status']}", a["id"]) for a in audits if a["batch_id"] is None),
        *((f"audit.{a['status']}", a["id"]) for a in audits if a["item_events"]),
        *(("batch.completed", b["id"]) for b in batches),
    }


def event_of(attempt: Try) -> tuple[str, str]:
    payload = attempt.payload
    return payload["type"], payload["data"]["id"]


async def until_tried(receiver: Receiver, count: int, *, within: float = 120.0) -> None:
    deadline = time.monotonic() + within
    while len(receiver.tries) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"only {len(receiver.tries)} tries after {within} s")
        await asyncio.sleep(0.05)


async def tries_cut_short(database_url: str) -> int:
    """Tries that left no record: claimed by a worker that died before it could write one."""
    rows = await query(
        database_url,
        "SELECT count(*) AS n FROM webhook_event AS e, generate_series(1, e.attempts) AS s(n) "
        "WHERE NOT EXISTS (SELECT 1 FROM webhook_attempt AS a "
        "WHERE a.event_id = e.id AND a.number = s.n)",
    )
    return int(rows[0]["n"])


async def test_every_end_reaches_a_failing_receiver_signed_with_a_worker_killed_mid_run(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    async with receiving(failing(FAILING_SHARE, seed=11), delay_s=RECEIVER_DELAY_S) as receiver:
        with simulator_process(tmp_path, latency_ms="20..200", seed=3) as sim:
            env = stack_env(
                database_url=scratch_db,
                redis_url=own_redis.url,
                simulator=sim,
                WEBHOOK_SECRET=SECRET,
                WEBHOOK_ALLOW_PRIVATE="true",
            )
            stack = Stack(env, tmp_path)
            stacks.append(stack)
            api = await stack.start_web()
            doomed, survivor = stack.start_worker(), stack.start_worker()
            run = FaultRun("webhooks_worker_killed", stack, api, sim, scratch_db)
            submissions = with_callbacks(plan(AUDITS, seed=5), receiver.url())
            run.submit_plan(submissions, clients=CLIENTS, pause_s=CLIENT_PAUSE_S)

            await run.accepted(AUDITS // 4)
            await until_tried(receiver, 30)  # deliveries under way on both workers
            killed_mid_job, replacement = await run.kill_worker(doomed)

            outcome = await run.settle()
            expected = await expected_events(scratch_db)
            delivered = await receiver.until_delivered(len(expected), within=DELIVERED_WITHIN_S)
            cut_short = await tries_cut_short(scratch_db)

            delivered_events = Counter(event_of(t) for t in delivered.values())
            failed_tries = [t for t in receiver.tries if t.status >= 300]
            ok_tries = Counter(t.webhook_id for t in receiver.tries if t.status < 300)
            run.record(
                outcome,
                {"workers": 2, "receiver_failing_share": FAILING_SHARE},
                webhook_events_expected=len(expected),
                webhook_events_delivered=len(delivered),
                webhook_tries=len(receiver.tries),
                webhook_tries_failed=len(failed_tries),
                webhook_tries_cut_short_by_the_kill=cut_short,
                webhook_delivered_more_than_once=sum(1 for n in ok_tries.values() if n > 1),
            )
            assert_promises_kept(
                run,
                outcome,
                submitted=AUDITS,
                min_succeeded_pct=99.0,
                killed_mid_attempt=killed_mid_job,
            )
            assert survivor.alive(), survivor.output()
            assert replacement.alive(), replacement.output()

    assert set(delivered_events) == expected
    assert max(delivered_events.values()) == 1  # one event per end: none written twice
    for attempt in receiver.tries:  # every try signed, failed ones too
        payload = attempt.verified(SECRET)
        assert (payload["type"], payload["data"]["id"]) == event_of(attempt)
    # A failed try's event came back with the same id until a 2xx.
    assert {t.webhook_id for t in failed_tries} <= set(delivered)
    assert 0.2 < len(failed_tries) / len(receiver.tries) < 0.4
