"""A hostile model reply, end to end (issue 8, part 1): refused at once, its audit fails
with `invalid_model_output`, and the worker's other audits carry on as usual.

Before replies were bounded and quotes searched in linear time, the probe's reply (six
quotes of 40,001 characters per finding, against 100,000 characters of "a a a …") froze
the worker's event loop for 44-53 s per attempt: arq's timeout cancelled the attempt once
the loop was free, the answer was thrown away, and the audits beside it waited.
"""

from httpx import AsyncClient

from tests.fixtures.simulator import SimulatorHandle
from tests.worker.conftest import RunWorker, fetch, submit

HOSTILE_SUBJECT = "Hostile reply"
PROBE_CONTENT = ("a " * 50000)[:100000]
ORDINARY = 20


async def test_a_hostile_reply_fails_its_audit_and_the_others_finish_as_usual(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    # Both calls of the hostile audit's attempt get the hostile reply, whatever the order
    # in which the worker's concurrent jobs reach the model.
    sim.script(["hostile", "hostile"], subject=HOSTILE_SUBJECT)
    hostile = await submit(client, subject=HOSTILE_SUBJECT, content=PROBE_CONTENT)
    ordinary = [await submit(client, subject=f"Page {n}") for n in range(ORDINARY)]

    # All 21 jobs run at once (WORKER_CONCURRENCY 50), the hostile one among them.
    await run_worker()

    failed = await fetch(client, hostile["id"])
    assert (failed["status"], failed["attempts"]) == ("failed", 1)
    assert failed["error"]["code"] == "invalid_model_output"
    assert "the reply is longer than" in failed["error"]["message"]
    assert failed["result"] is None
    assert failed["usage"]["completion_tokens"] > 0, "both hostile replies are paid for"
    finished = [await fetch(client, audit["id"]) for audit in ordinary]
    assert [(a["status"], a["attempts"]) for a in finished] == [("succeeded", 1)] * ORDINARY
    # One call for each ordinary audit, two for the hostile one: nothing was retried,
    # no attempt was cut short by the job timeout.
    assert sim.stats() == {"requests": ORDINARY + 2, "outcomes": {"hostile": 2, "ok": ORDINARY}}
