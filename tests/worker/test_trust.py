"""Trust in a finding, end to end: submitted through the API, run by a real arq worker
against the simulator over HTTP.

Each succeeded audit shows its provenance with the provider's request id; the samples of
an inconsistent judge disagree and say so, those of a deterministic one agree exactly; a
reply that contradicts itself is corrected or fails; a rerun shows the provenance of its
own run.
"""

import hashlib
import json
from typing import Any

from httpx import AsyncClient

from shared.config import Settings
from shared.llm.prompt import PROMPT_VERSION
from shared.version import AUDITQ_VERSION
from tests.fixtures.simulator import SimulatorHandle
from tests.worker.conftest import LogEvents, RunWorker, fetch, submit
from worker.context import JobContext
from worker.tasks import run_audit

SUBJECT = "Product page: bamboo toothbrush"  # audit_request's


def schema_digest(request: dict[str, Any]) -> str:
    schema = request["response_format"]["json_schema"]["schema"]
    canonical = json.dumps(schema, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def agreements(audit: dict[str, Any]) -> list[float]:
    return [finding["agreement"] for finding in audit["result"]["findings"]]


async def test_a_succeeded_audit_shows_its_provenance(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker, worker_settings: Settings
) -> None:
    submitted = await submit(client)
    assert submitted["provenance"] is None

    await run_worker(worker_settings.model_copy(update={"openai_seed": 1234}))

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    [request] = sim.requests()
    provenance = audit["provenance"]
    assert provenance["provider_request_id"].startswith("sim-")
    assert provenance == {
        "model": submitted["model"],  # the simulator serves the model it is asked for
        "model_requested": submitted["model"],
        "prompt_version": PROMPT_VERSION,
        "schema_sha256": schema_digest(request),
        "provider_request_id": provenance["provider_request_id"],
        "temperature": 0.0,
        "seed": 1234,
        "auditq_version": AUDITQ_VERSION,
    }
    assert (request["temperature"], request["seed"]) == (0.0, 1234)
    assert (audit["samples"], audit["result"]["samples"], audit["result"]["agreement"]) == (
        1,
        1,
        1.0,
    )


async def test_each_sample_is_sent_a_seed_of_its_own(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker, worker_settings: Settings
) -> None:
    submitted = await submit(client, samples=3)

    await run_worker(worker_settings.model_copy(update={"openai_seed": 1234}))

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert sorted(request["seed"] for request in sim.requests()) == [1234, 1235, 1236]
    assert audit["provenance"]["seed"] == 1234  # that of the first sample, whose reply it shows


async def test_the_samples_of_an_inconsistent_judge_disagree(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    sim.script(["inconsistent"] * 5, subject=SUBJECT)
    submitted = await submit(client, samples=5)

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert sim.stats()["outcomes"] == {"inconsistent": 5}
    assert audit["result"]["samples"] == 5
    assert min(agreements(audit)) < 1
    assert all(share in (0.4, 0.6, 0.8, 1.0) for share in agreements(audit))
    assert audit["result"]["agreement"] < 1
    assert audit["usage"]["prompt_tokens"] > 4 * (await first_prompt_tokens(client, sim))


async def first_prompt_tokens(client: AsyncClient, sim: SimulatorHandle) -> int:
    """The prompt tokens of one call of the same audit (the simulator counts a request's)."""
    return max(1, len(json.dumps(sim.requests()[0]["messages"], ensure_ascii=False)) // 4)


async def test_the_samples_of_a_deterministic_judge_agree_exactly(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    submitted = await submit(client, samples=5)

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert sim.stats()["requests"] == 5
    assert agreements(audit) == [1.0, 1.0]
    assert audit["result"]["agreement"] == 1.0


async def test_a_self_contradicting_reply_is_corrected(
    client: AsyncClient, sim: SimulatorHandle, worker_ctx: JobContext, job_logs: LogEvents
) -> None:
    sim.script(["contradiction", "ok"])
    submitted = await submit(client)

    await run_audit(worker_ctx, submitted["id"])

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert sim.stats()["requests"] == 2
    invalid = [e for e in job_logs.events if e["event"] == "model_reply_invalid"]
    assert [(e["kind"], e["corrective_call"]) for e in invalid] == [("contradiction", True)]
    [succeeded] = [e for e in job_logs.events if e["event"] == "audit_succeeded"]
    assert succeeded["invalid_replies"] == ["contradiction"]


async def test_a_reply_that_contradicts_itself_again_fails_as_invalid_output(
    client: AsyncClient, sim: SimulatorHandle, worker_ctx: JobContext
) -> None:
    sim.script(["contradiction", "contradiction"])
    submitted = await submit(client)

    await run_audit(worker_ctx, submitted["id"])

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "failed"
    assert audit["error"]["code"] == "invalid_model_output"
    assert "contradict" in audit["error"]["message"]
    assert audit["usage"]["completion_tokens"] > 0  # both replies were paid for
    assert audit["provenance"] is None


async def test_a_rerun_shows_the_provenance_of_its_own_run(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    original = await submit(client, samples=2)
    await run_worker()
    rerun = (await client.post(f"/audits/{original['id']}/rerun")).json()

    await run_worker()

    first, second = await fetch(client, original["id"]), await fetch(client, rerun["id"])
    assert (first["status"], second["status"]) == ("succeeded", "succeeded")
    assert second["rerun_of"] == first["id"]
    assert sim.stats()["requests"] == 4
    ids = (first["provenance"]["provider_request_id"], second["provenance"]["provider_request_id"])
    assert ids[0] != ids[1]
    same = {k: v for k, v in first["provenance"].items() if k != "provider_request_id"}
    assert same == {k: v for k, v in second["provenance"].items() if k != "provider_request_id"}
    assert first["result"]["findings"] == second["result"]["findings"]  # a deterministic judge
