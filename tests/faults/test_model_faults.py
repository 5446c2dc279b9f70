"""The model misbehaving in every way the simulator knows, under load.

1,000 audits from 50 concurrent clients while the model hangs past the timeout, answers
429 and 500, malformed JSON, refusals and truncated output a fifth of the time: each
audit ends once, refusals and truncations fail at once with their own `error.code`, the
rest succeed. And a 429 with a long `Retry-After`: honoured, without holding a slot.
"""

from datetime import timedelta
from pathlib import Path

import pytest

from tests.faults.load import plan
from tests.faults.outcome import query
from tests.faults.scenario import FaultRun, assert_promises_kept, stack_env
from tests.faults.services import OwnRedis
from tests.faults.stack import Stack
from tests.fixtures.processes import simulator_process

pytestmark = pytest.mark.slow

AUDITS = 1000
CLIENTS = 50
FAULT_RATE = 0.2
EVERY_FAULT = "429,500,hang,malformed,refusal,truncated"
# Permanent: a later attempt would get the same answer.
PERMANENT = {"refusal": "model_refused", "truncated": "output_truncated"}


async def test_every_model_fault_kind_under_load_ends_each_audit_once(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with simulator_process(
        tmp_path, fault_rate=FAULT_RATE, faults=EVERY_FAULT, latency_ms="20..200", seed=3
    ) as sim:
        stack = Stack(
            stack_env(database_url=scratch_db, redis_url=own_redis.url, simulator=sim), tmp_path
        )
        stacks.append(stack)
        api = await stack.start_web()
        stack.start_worker()
        stack.start_worker()
        run = FaultRun("every_model_fault", stack, api, sim, scratch_db)
        run.submit(AUDITS, clients=CLIENTS, pause_s=1.0)

        outcome = await run.settle()
        injected = sim.stats()["outcomes"]
        permanent = sum(injected.get(kind, 0) for kind in PERMANENT)
        survivable = outcome.accepted - permanent
        succeeded_of_survivable = 100.0 * outcome.by_status.get("succeeded", 0) / survivable
        run.record(
            outcome,
            {"audits": AUDITS, "clients": CLIENTS, "fault_rate": FAULT_RATE, "faults": EVERY_FAULT},
            succeeded_pct_of_audits_without_a_permanent_fault=round(succeeded_of_survivable, 2),
        )
        assert_promises_kept(run, outcome, submitted=AUDITS, min_succeeded_pct=None)
        # Each refusal and each truncated reply failed its audit, at once, with its own code.
        for kind, code in PERMANENT.items():
            assert outcome.failures_by_code.get(code, 0) == injected.get(kind, 0), (
                outcome.problems()
            )
        # Otherwise only a reply malformed twice in a row fails (asked again once).
        assert set(outcome.failures_by_code) <= {*PERMANENT.values(), "invalid_model_output"}
        assert succeeded_of_survivable >= 97.0, outcome.problems()


LONG_RETRY_AFTER_S = 30


async def test_a_long_retry_after_is_honoured_without_holding_a_worker_slot(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with simulator_process(tmp_path, latency_ms="100", retry_after_s=LONG_RETRY_AFTER_S) as sim:
        env = stack_env(
            database_url=scratch_db,
            redis_url=own_redis.url,
            simulator=sim,
            OPENAI_MODEL="model-a",
            ALLOWED_MODELS="model-a,model-b",
            WORKER_CONCURRENCY="2",
        )
        stack = Stack(env, tmp_path)
        stacks.append(stack)
        api = await stack.start_web()
        sim.script(["429"])
        stack.start_worker()
        run = FaultRun("long_retry_after", stack, api, sim, scratch_db)
        first = plan(1, seed=99)
        run.submit_plan(first, clients=1)
        await run.model_requests(1)
        rest = plan(80, seed=1, batch_share=0.0)
        for number, submission in enumerate(rest):
            submission.audits[0]["model"] = "model-b" if number % 2 else "model-a"
        run.submit_plan(rest, clients=10)

        outcome = await run.settle(within=180)
        rows = await query(
            scratch_db,
            "SELECT model, attempts, created_at, finished_at FROM audit ORDER BY created_at",
        )
        rate_limited_at = rows[0]["created_at"]
        resumed_at = rate_limited_at + timedelta(seconds=LONG_RETRY_AFTER_S)
        b_done = [r["finished_at"] for r in rows if r["model"] == "model-b"]
        a_done = [r["finished_at"] for r in rows if r["model"] == "model-a"]
        run.record(
            outcome,
            {"audits": 81, "retry_after_s": LONG_RETRY_AFTER_S},
            model_b_done_before_pause_ended=sum(t < resumed_at for t in b_done),
            model_a_done_before_pause_ended=sum(t < resumed_at for t in a_done),
        )
        assert_promises_kept(run, outcome, submitted=81, min_succeeded_pct=100.0)
        assert sim.stats()["outcomes"] == {"429": 1, "ok": 81}
        assert (rows[0]["attempts"], rows[0]["model"]) == (2, "model-a")
        # The other model's audits went through the two slots while model-a waited...
        assert max(b_done) < resumed_at, (max(b_done), resumed_at)
        # ...and no model-a call was made before the provider's Retry-After had passed.
        assert min(a_done) >= resumed_at, (min(a_done), resumed_at)
