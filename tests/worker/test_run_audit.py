"""`run_audit` end to end: submitted through the API, run by a real arq worker, model simulated.

Every fault the simulator injects is routed to the retry or the terminal error the README
promises; duplicate, late and cancelled runs never write a second outcome.
"""

import asyncio
import json
import math
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import pytest
from arq import Retry
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from httpx import AsyncClient

from shared.audits.schemas import AuditResult
from shared.config import Settings
from shared.db import SessionFactory
from shared.llm.prompt import PROMPT_VERSION
from shared.queue import audit_job_id, enqueue_runs
from tests.factories import audit_request
from tests.fixtures.jobs import single_run
from tests.fixtures.simulator import RETRY_AFTER_S, SimulatorHandle
from tests.rows import load_audit
from tests.worker.conftest import (
    LogEvents,
    RunWorker,
    fetch,
    model_called,
    submit,
)
from worker.context import JobContext
from worker.tasks import run_audit

HANG_TIMEOUT_S = 1.0
ABORT_WAIT_S = 10.0
WEIGHTS = {c["id"]: c.get("weight", 1.0) for c in audit_request()["criteria"]}


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value)


# Faults where the model did answer, with usage, in a reply auditq cannot use.
ANSWERED_FAULTS = {"refusal", "truncated", "content_filter", "malformed", "wrong_ids"}


def prompt_tokens_of(requests: list[dict[str, Any]]) -> int:
    """The simulator's estimate: four characters of the JSON messages per token."""
    return sum(math.ceil(len(json.dumps(r["messages"], ensure_ascii=False)) / 4) for r in requests)


async def assert_no_job_left(redis: ArqRedis, settings: Settings, audit_id: str) -> None:
    job_id = audit_job_id(UUID(audit_id))
    assert await redis.exists(job_key_prefix + job_id) == 0
    assert await redis.zscore(settings.queue_name, job_id) is None


# The happy path


async def test_a_submitted_audit_runs_to_succeeded(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    redis: ArqRedis,
    settings: Settings,
    session_factory: SessionFactory,
) -> None:
    submitted = await submit(client)
    assert submitted["status"] == "queued"

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["attempts"] == 1
    assert audit["error"] is None
    result = AuditResult.model_validate(audit["result"])
    assert [f.criterion_id for f in result.findings] == list(WEIGHTS)
    quotes = [quote for f in result.findings for quote in f.evidence]
    assert quotes, "the simulator quotes the content"
    assert all(quote in audit["content"] for quote in quotes)
    applicable = [f for f in result.findings if f.verdict != "not_applicable"]
    expected = sum(f.score * WEIGHTS[f.criterion_id] for f in applicable) / sum(
        WEIGHTS[f.criterion_id] for f in applicable
    )
    assert result.score == round(expected, 2)
    assert result.summary
    created, started, finished = (
        parse_time(audit[key]) for key in ("created_at", "started_at", "finished_at")
    )
    assert created <= started <= finished
    requests = sim.requests()
    assert len(requests) == 1
    assert requests[0]["model"] == submitted["model"]
    usage = audit["usage"]
    assert usage["prompt_tokens"] == prompt_tokens_of(requests)
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    row = await load_audit(session_factory, submitted["id"])
    assert row.prompt_version == PROMPT_VERSION
    assert row.provider_request_id is not None
    assert row.provider_request_id.startswith("sim-")
    assert row.lease_until is None
    await assert_no_job_left(redis, settings, submitted["id"])


def job_lines(output: str, audit_id: str) -> list[tuple[str, str]]:
    """(logger, event) of the JSON lines that name the audit, in order."""
    events = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [
        (e["logger"], e["event"])
        for e in events
        if e.get("audit_id") == audit_id or audit_id in str(e["event"])
    ]


async def test_a_job_logs_each_transition_once(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    retry_delays: list[tuple[int, float | None]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    sim.script(["500", "ok"])
    submitted = await submit(client)

    await run_worker()

    lines = job_lines(capsys.readouterr().out, submitted["id"])
    own = [event for logger, event in lines if logger == "worker.run_audit"]
    assert own == ["audit_started", "audit_retry_scheduled", "audit_started", "audit_succeeded"]
    # arq's own line for each start and return repeats them; its retry line is kept.
    arq = [event for logger, event in lines if logger == "arq.worker"]
    assert len(arq) == 1
    assert "retrying job" in arq[0]


# Faults, one attempt at a time


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (["400"], "model_bad_request"),
        (["401"], "model_auth_failed"),
        (["403"], "model_permission_denied"),
        (["404"], "model_not_found"),
        (["context_length"], "context_length_exceeded"),
        (["refusal"], "model_refused"),
        (["truncated"], "output_truncated"),
        (["content_filter"], "content_filtered"),
        (["malformed", "malformed"], "invalid_model_output"),
        (["wrong_ids", "wrong_ids"], "invalid_model_output"),
        (["malformed", "wrong_ids"], "invalid_model_output"),
    ],
)
async def test_a_permanent_fault_fails_the_audit_at_once(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    retry_delays: list[tuple[int, float | None]],
    script: list[str],
    code: str,
) -> None:
    sim.script([*script, "ok"])
    submitted = await submit(client)

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "failed"
    assert audit["error"]["code"] == code
    assert audit["error"]["message"]
    assert audit["attempts"] == 1
    assert audit["result"] is None
    assert audit["finished_at"] is not None
    assert sim.stats()["requests"] == len(script)  # the "ok" was never asked for
    assert retry_delays == []
    if set(script) <= ANSWERED_FAULTS:  # replies that could not be used, paid for all the same
        assert audit["usage"]["prompt_tokens"] == prompt_tokens_of(sim.requests())
        assert audit["usage"]["completion_tokens"] > 0
    else:
        assert audit["usage"] is None


@pytest.mark.parametrize(
    ("fault", "retry_after"),
    [("429", float(RETRY_AFTER_S)), ("500", None), ("503", None), ("hang", None)],
)
async def test_a_transient_fault_is_retried_in_a_new_attempt(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    worker_settings: Settings,
    retry_delays: list[tuple[int, float | None]],
    fault: str,
    retry_after: float | None,
) -> None:
    sim.script([fault, "ok"])
    submitted = await submit(client)

    await run_worker(worker_settings.model_copy(update={"openai_timeout_s": HANG_TIMEOUT_S}))

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["attempts"] == 2
    assert audit["error"] is None
    assert sim.stats() == {"requests": 2, "outcomes": {fault: 1, "ok": 1}}
    assert retry_delays == [(1, retry_after)]  # the provider's Retry-After is passed on


@pytest.mark.parametrize(
    ("fault", "code"),
    [
        ("429", "model_rate_limited"),
        ("500", "model_server_error"),
        ("503", "model_unavailable"),
        ("hang", "model_timeout"),
    ],
)
async def test_a_transient_fault_that_persists_fails_after_max_attempts(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    worker_settings: Settings,
    retry_delays: list[tuple[int, float | None]],
    max_attempts: Callable[[int], None],
    fault: str,
    code: str,
) -> None:
    max_attempts(3)
    sim.script([fault] * 3 + ["ok"])
    submitted = await submit(client)

    await run_worker(worker_settings.model_copy(update={"openai_timeout_s": HANG_TIMEOUT_S}))

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "failed"
    assert audit["attempts"] == 3
    assert audit["error"]["code"] == code
    assert sim.stats() == {"requests": 3, "outcomes": {fault: 3}}
    assert [attempt for attempt, _ in retry_delays] == [1, 2]  # no retry after the last


@pytest.mark.parametrize("fault", ["malformed", "wrong_ids"])
async def test_an_invalid_reply_is_corrected_within_the_same_attempt(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker, fault: str
) -> None:
    sim.script([fault, "ok"])
    submitted = await submit(client)

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["attempts"] == 1
    requests = sim.requests()
    assert len(requests) == 2
    assert requests[1]["messages"][: len(requests[0]["messages"])] == requests[0]["messages"]
    # Both replies were paid for, so both count.
    assert audit["usage"]["prompt_tokens"] == prompt_tokens_of(requests)


async def test_a_transient_fault_on_the_correction_call_retries_the_attempt(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    retry_delays: list[tuple[int, float | None]],
) -> None:
    sim.script(["malformed", "500", "ok"])
    submitted = await submit(client)

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]
    assert audit["attempts"] == 2
    assert sim.stats()["requests"] == 3


async def test_a_transient_fault_defers_the_job_instead_of_holding_a_slot(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_ctx: JobContext,
    session_factory: SessionFactory,
) -> None:
    sim.script(["429"])
    submitted = await submit(client)

    with pytest.raises(Retry) as retry:
        await run_audit(worker_ctx, submitted["id"])

    # The job ends at once and asks arq to run it again no sooner than Retry-After.
    assert retry.value.defer_score is not None
    assert retry.value.defer_score >= RETRY_AFTER_S * 1000
    audit = await load_audit(session_factory, submitted["id"])
    assert (audit.status, audit.attempts, audit.lease_until) == ("queued", 1, None)
    assert audit.error_code is None  # the last error is kept only when it ends the audit


# Duplicate delivery, zombies, cancellation


async def test_the_same_job_run_twice_at_once_runs_the_audit_once(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_ctx: JobContext,
    job_logs: LogEvents,
) -> None:
    submitted = await submit(client)

    await asyncio.gather(
        run_audit(worker_ctx, submitted["id"]), run_audit(worker_ctx, submitted["id"])
    )

    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("succeeded", 1)
    assert sim.stats()["requests"] == 1
    events = job_logs.of(submitted["id"])
    assert events.count("audit_succeeded") == 1
    assert events.count("job_skipped") == 1


async def test_the_same_job_run_again_later_changes_nothing(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_ctx: JobContext,
    job_logs: LogEvents,
) -> None:
    submitted = await submit(client)
    await run_audit(worker_ctx, submitted["id"])
    first = await fetch(client, submitted["id"])
    job_logs.clear()

    await run_audit(worker_ctx, submitted["id"])

    assert await fetch(client, submitted["id"]) == first
    assert first["status"] == "succeeded"
    assert sim.stats()["requests"] == 1
    assert job_logs.of(submitted["id"]) == ["job_skipped"]


async def test_cancel_aborts_the_running_job_and_the_audit_stays_cancelled(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    worker_settings: Settings,
    redis: ArqRedis,
) -> None:
    sim.script(["hang", "ok"])
    submitted = await submit(client)
    audit_id = submitted["id"]
    # Unaborted, the hanging call would hold the job for ABORT_WAIT_S and more.
    patient = worker_settings.model_copy(update={"openai_timeout_s": 2 * ABORT_WAIT_S})
    worker_run = asyncio.create_task(run_worker(patient))
    await model_called(sim)
    running = await fetch(client, audit_id)
    assert running["status"] == "running"

    response = await client.post(f"/audits/{audit_id}/cancel")
    assert response.status_code == 200, response.text
    await asyncio.wait_for(worker_run, ABORT_WAIT_S)  # the abort ended the hanging call

    cancelled = await fetch(client, audit_id)
    assert cancelled["status"] == "cancelled"
    assert cancelled["finished_at"] == response.json()["finished_at"]
    assert (cancelled["attempts"], cancelled["result"]) == (1, None)
    assert sim.stats() == {"requests": 1, "outcomes": {"hang": 1}}
    await assert_no_job_left(redis, worker_settings, audit_id)
    # A stray job for it later (a duplicate, a reconciler) does not run it again.
    await enqueue_runs(redis, [single_run(UUID(audit_id))])
    await run_worker()
    assert await fetch(client, audit_id) == cancelled
    assert sim.stats()["requests"] == 1


async def test_a_queued_audit_cancelled_before_its_job_starts_never_runs(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    submitted = await submit(client)
    response = await client.post(f"/audits/{submitted['id']}/cancel")
    assert response.status_code == 200, response.text

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("cancelled", 0)
    assert sim.stats()["requests"] == 0


# Retried by a client


async def test_a_failed_audit_retried_by_the_client_gets_a_fresh_budget(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    retry_delays: list[tuple[int, float | None]],
    max_attempts: Callable[[int], None],
) -> None:
    max_attempts(2)
    sim.script(["500", "500", "500", "ok"])
    submitted = await submit(client)
    await run_worker()
    failed = await fetch(client, submitted["id"])
    assert (failed["status"], failed["attempts"]) == ("failed", 2)

    response = await client.post(f"/audits/{submitted['id']}/retry")
    assert response.status_code == 202, response.text
    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("succeeded", 4)
    assert audit["error"] is None
    assert parse_time(audit["started_at"]) > parse_time(failed["finished_at"])


async def test_a_cancelled_audit_retried_at_once_is_not_aborted_by_the_old_mark(
    client: AsyncClient, sim: SimulatorHandle, run_worker: RunWorker
) -> None:
    # The cancel marks the job for abortion; the retry finds that same job still queued.
    submitted = await submit(client)
    cancel = await client.post(f"/audits/{submitted['id']}/cancel")
    assert cancel.status_code == 200, cancel.text
    retry = await client.post(f"/audits/{submitted['id']}/retry")
    assert retry.status_code == 202, retry.text

    await run_worker()

    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("succeeded", 1)
    assert sim.stats()["requests"] == 1
