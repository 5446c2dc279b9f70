"""A hostile model under load (issue 8, part 1), through the Procfile's processes.

A tenth of the model's replies are the probe's hostile reply (six quotes of 40,001
characters per finding, a rationale of a million characters), a third of the audits carry
the probe's content (100,000 characters of "a a a …", where those quotes cost 8 s each to
search with the former regex). Each hostile reply is refused at once as invalid output and
asked again; nothing times out, nothing is retried, and the audits' pace is recorded.
"""

from pathlib import Path

import pytest

from tests.faults.load import Submission, plan
from tests.faults.outcome import query
from tests.faults.scenario import FaultRun, assert_promises_kept, stack_env
from tests.faults.services import OwnRedis
from tests.faults.stack import Stack
from tests.fixtures.processes import simulator_process

pytestmark = pytest.mark.slow

AUDITS = 300
CLIENTS = 20
FAULT_RATE = 0.1
PROBE_CONTENT = ("a " * 50000)[:100000]
# The simulator counts four characters a token: a hostile reply alone is over 250,000.
ORDINARY_REPLIES_MAX_TOKENS = 100_000


def probe_plan(total: int) -> list[Submission]:
    """The usual plan, every third audit's content the probe's."""
    submissions = plan(total, seed=5)
    for submission in submissions:
        for audit in submission.audits:
            if audit["metadata"]["number"] % 3 == 0:
                audit["content"] = PROBE_CONTENT
    return submissions


async def test_hostile_replies_are_refused_at_once_and_hold_up_nothing(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with simulator_process(
        tmp_path, fault_rate=FAULT_RATE, faults="hostile", latency_ms="20..200", seed=11
    ) as sim:
        stack = Stack(
            stack_env(database_url=scratch_db, redis_url=own_redis.url, simulator=sim), tmp_path
        )
        stacks.append(stack)
        api = await stack.start_web()
        stack.start_worker()
        run = FaultRun("hostile_reply", stack, api, sim, scratch_db)
        run.submit_plan(probe_plan(AUDITS), clients=CLIENTS)

        outcome = await run.settle()
        hostile = sim.stats()["outcomes"].get("hostile", 0)
        # The pace of the audits that got no hostile reply, beside those that did.
        pace = await query(
            scratch_db,
            "SELECT percentile_cont(array[0.5, 0.99]) WITHIN GROUP"
            " (ORDER BY extract(epoch FROM finished_at - started_at) * 1000) AS ms"
            " FROM audit WHERE status = 'succeeded' AND completion_tokens < $1",
            ORDINARY_REPLIES_MAX_TOKENS,
        )
        p50_ms, p99_ms = (round(ms) for ms in pace[0]["ms"])
        run.record(
            outcome,
            {"audits": AUDITS, "clients": CLIENTS, "fault_rate": FAULT_RATE, "faults": "hostile"},
            hostile_replies=hostile,
            ordinary_run_ms_p50=p50_ms,
            ordinary_run_ms_p99=p99_ms,
        )
        assert_promises_kept(run, outcome, submitted=AUDITS, min_succeeded_pct=None)
        assert hostile > 0
        # Every audit ended on its first attempt: no job timeout, no interruption, no retry.
        assert outcome.attempts == {1: AUDITS}, outcome.problems()
        # Only an audit whose both calls got a hostile reply fails, as invalid output.
        assert set(outcome.failures_by_code) <= {"invalid_model_output"}, outcome.problems()
        assert outcome.failures_by_code.get("invalid_model_output", 0) <= hostile // 2
