"""One attempt at an audit as a domain service: its outcomes, its fenced finishes, its restarts.

`run_attempt` runs against the real PostgreSQL, with the model, the rate limits and the
clock faked; tests/worker runs it end to end through arq, the simulator and Redis.
"""

import asyncio
from collections.abc import Iterator
from contextlib import AbstractAsyncContextManager
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from functools import partial
from typing import Any
from uuid import UUID

import pytest
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits import service as audits
from shared.audits.repository import ClaimedAudit
from shared.audits.runs import (
    DATABASE_DOWN_DEFER_S,
    DATABASE_UNAVAILABLE,
    FINISH_RETRY_DELAYS_S,
    INTERRUPTED,
    RATE_LIMIT_WAIT,
    AttemptOutcome,
    AuditEnded,
    Clock,
    Connect,
    Failed,
    OnHold,
    RetryIn,
    Skipped,
    Succeeded,
    run_attempt,
)
from shared.audits.samples import Sampled
from shared.audits.status import AuditStatus
from shared.config import Settings, TokenPrices
from shared.db import SessionFactory, StatementConnection, create_engine
from shared.db import statement_connection as connect_to
from shared.llm.errors import ModelError
from shared.llm.ratelimit import Reservation
from shared.llm.schemas import ModelOutcome, ReplyFinding, Verdict
from shared.llm.usage import ReplyTokens, TokenUsage
from shared.logging import configure_logging
from shared.spend import budgets
from shared.spend.prices import PriceTable
from shared.tenants.caller import DEFAULT_TENANT
from tests.fixtures.pgproxy import proxy_closing_late
from tests.fixtures.polling import eventually
from tests.rows import (
    CRITERIA,
    expire_lease,
    insert_audit,
    insert_batch,
    load_audit,
    load_batch,
    running_audit,
    set_monthly_budget,
    spend_this_month,
    spent_this_month,
)
from tests.worker.conftest import LogEvents

pytestmark = pytest.mark.usefixtures("clean")

LEASE = timedelta(seconds=60)
RETRY_DELAY_S = 7.0
RESERVED = Reservation(requests=1, tokens=500)
# The audits' model at MODEL_PRICES's example: USD 0.15 and 0.60 per million tokens.
PRICES = PriceTable({"gpt-4o-mini": TokenPrices(Decimal("0.15"), Decimal("0.60"))})


def tokens(prompt: int, completion: int, cached: int = 0) -> TokenUsage:
    """The usage of one answered call."""
    return TokenUsage((ReplyTokens(prompt, completion, cached),))


def answer_to(audit: ClaimedAudit) -> ModelOutcome:
    """A valid answer: every criterion passes, quoting nothing."""
    findings = [
        ReplyFinding(criterion_id=c.id, verdict="pass", score=90, rationale="Fine.", evidence=[])
        for c in audit.criteria
    ]
    return ModelOutcome(
        findings=findings,
        summary="All good.",
        dropped_quotes=0,
        usage=tokens(100, 20),
        request_id="req-1",
        prompt_version="v-test",
    )


Reply = ModelError | ModelOutcome | None


class FakeModel:
    """Answers each call with the next of `replies` (None: a valid answer; an answer of its
    own; else the error).

    With `held`, calls wait until `release()`, as a stalled provider would keep them.
    """

    def __init__(self, *replies: Reply, held: bool = False) -> None:
        self.replies = list(replies) or [None]
        self.calls = 0
        self._released = asyncio.Event()
        if not held:
            self._released.set()

    async def __call__(self, audit: ClaimedAudit, sample: int = 0) -> ModelOutcome:
        self.calls += 1
        reply = self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]
        await self._released.wait()
        if isinstance(reply, ModelError):
            raise reply
        return reply or answer_to(audit)

    def release(self) -> None:
        self._released.set()


class FakeAdmission:
    """Admits every call (or sends each back `refuse_for` seconds), noting what it is told."""

    def __init__(self, refuse_for: float | None = None) -> None:
        self.refuse_for = refuse_for
        self.settled: list[tuple[Reservation, Sampled]] = []
        self.errors: list[str] = []

    async def reserve(self, audit_id: UUID) -> Reservation | RetryIn:
        return RESERVED if self.refuse_for is None else RetryIn(self.refuse_for, RATE_LIMIT_WAIT)

    async def settle(self, audit: ClaimedAudit, reserved: Reservation, used: Sampled) -> None:
        self.settled.append((reserved, used))

    async def on_model_error(self, audit: ClaimedAudit, error: ModelError) -> None:
        self.errors.append(error.code)


class FakeClock:
    """Asked for delays, it answers `RETRY_DELAY_S` at once; asked to sleep, it notes it."""

    def __init__(self) -> None:
        self.asked: list[tuple[int, float | None]] = []
        self.slept: list[float] = []

    def retry_delay(self, attempt: int, *, retry_after: float | None = None) -> float:
        self.asked.append((attempt, retry_after))
        return max(RETRY_DELAY_S, retry_after or 0.0)

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)

    def clock(self) -> Clock:
        return Clock(retry_delay=self.retry_delay, sleep=self.sleep)


class Outage:
    """Connections to PostgreSQL, refused while `refusing` is above zero (one per try)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.refusing = 0

    def __call__(self) -> AbstractAsyncContextManager[StatementConnection]:
        if self.refusing > 0:
            self.refusing -= 1
            raise ConnectionRefusedError("PostgreSQL is restarting")
        return connect_to(self.engine)


def transient(retry_after: float | None = None) -> ModelError:
    return ModelError(
        "model_server_error", "the provider failed", transient=True, retry_after=retry_after
    )


def permanent() -> ModelError:
    return ModelError("model_refused", "the model refused", transient=False).charged(tokens(40, 5))


@pytest.fixture
def events() -> Iterator[LogEvents]:
    configure_logging()
    events = LogEvents()
    processors = structlog.get_config()["processors"]
    processors.insert(len(processors) - 1, events)
    yield events
    processors.remove(events)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def admission() -> FakeAdmission:
    return FakeAdmission()


@pytest.fixture
def ended() -> list[AuditEnded]:
    """What the attempts of the test told `on_ended`."""
    return []


def ends(ended: list[AuditEnded]) -> list[tuple[UUID, AuditStatus, str | None]]:
    return [(e.audit.id, e.status, e.error_code) for e in ended]


@pytest.fixture
def run(
    engine: AsyncEngine, admission: FakeAdmission, clock: FakeClock, ended: list[AuditEnded]
) -> Any:
    """Run an attempt of the audit with the model given, the test's fakes and PostgreSQL."""

    async def run(
        audit_id: UUID, model: FakeModel, *, connect: Connect | None = None
    ) -> AttemptOutcome:
        return await run_attempt(
            audit_id,
            connect=connect or partial(connect_to, engine),
            lease=LEASE,
            admission=admission,
            ask_model=model,
            clock=clock.clock(),
            prices=PRICES,
            on_ended=ended.append,
        )

    return run


def names(events: LogEvents) -> list[str]:
    return [e["event"] for e in events.events if e.get("logger") == "worker.run_audit"]


# Outcomes


async def test_an_answered_attempt_succeeds_and_records_the_result(
    run: Any,
    session_factory: SessionFactory,
    admission: FakeAdmission,
    events: LogEvents,
    ended: list[AuditEnded],
) -> None:
    audit_id = await insert_audit(session_factory)

    outcome = await run(audit_id, FakeModel())

    assert isinstance(outcome, Succeeded)
    assert outcome.written
    assert (outcome.result.score, outcome.result.verdict) == (90.0, "pass")
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts, row.lease_until) == ("succeeded", 1, None)
    assert row.result is not None
    assert row.result["summary"] == "All good."
    assert (row.prompt_tokens, row.completion_tokens) == (100, 20)
    assert row.cost_usd == Decimal("0.000027")  # 100 * 0.15 + 20 * 0.60 micro-dollars
    assert (row.prompt_version, row.provider_request_id) == ("v-test", "req-1")
    assert [reserved for reserved, _ in admission.settled] == [RESERVED]
    assert names(events) == ["audit_started", "audit_succeeded"]
    assert ends(ended) == [(audit_id, "succeeded", None)]
    assert (ended[0].audit.priority, ended[0].audit.created_at) == (row.priority, row.created_at)


async def test_an_audit_that_is_not_claimable_is_skipped_without_asking_the_model(
    run: Any, session_factory: SessionFactory, events: LogEvents
) -> None:
    audit_id = await insert_audit(session_factory)
    await run(audit_id, FakeModel())
    model = FakeModel()

    outcome = await run(audit_id, model)

    assert isinstance(outcome, Skipped)
    assert model.calls == 0
    assert (await load_audit(session_factory, audit_id)).attempts == 1
    assert names(events)[-1] == "job_skipped"


async def test_a_call_the_rate_limits_refuse_comes_back_later_without_spending_an_attempt(
    run: Any, session_factory: SessionFactory, admission: FakeAdmission
) -> None:
    admission.refuse_for = 12.5
    audit_id = await insert_audit(session_factory)
    model = FakeModel()

    assert await run(audit_id, model) == RetryIn(12.5, RATE_LIMIT_WAIT)

    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts, row.started_at) == ("queued", 0, None)
    assert model.calls == 0


async def test_postgresql_out_of_reach_before_the_claim_comes_back_without_spending_an_attempt(
    run: Any, engine: AsyncEngine, session_factory: SessionFactory, events: LogEvents
) -> None:
    audit_id = await insert_audit(session_factory)
    outage = Outage(engine)
    outage.refusing = 1
    model = FakeModel()

    assert await run(audit_id, model, connect=outage) == RetryIn(
        DATABASE_DOWN_DEFER_S, DATABASE_UNAVAILABLE
    )

    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts) == ("queued", 0)
    assert model.calls == 0
    assert names(events) == ["database_unavailable"]


async def test_a_permanent_model_error_fails_the_audit_at_once(
    run: Any,
    session_factory: SessionFactory,
    admission: FakeAdmission,
    clock: FakeClock,
    events: LogEvents,
    ended: list[AuditEnded],
) -> None:
    audit_id = await insert_audit(session_factory)

    outcome = await run(audit_id, FakeModel(permanent()))

    assert outcome == Failed("model_refused", written=True)
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts, row.error_code) == ("failed", 1, "model_refused")
    assert (row.prompt_tokens, row.completion_tokens) == (40, 5)  # the refusal was paid for
    assert row.cost_usd == Decimal("0.000009")  # 40 * 0.15 + 5 * 0.60 micro-dollars
    assert admission.errors == ["model_refused"]
    assert clock.asked == []
    failed = [e for e in events.events if e["event"] == "audit_failed"]
    assert [(e["error_code"], e["permanent"]) for e in failed] == [("model_refused", True)]
    assert ends(ended) == [(audit_id, "failed", "model_refused")]


async def test_a_transient_model_error_requeues_the_audit_after_the_backoff(
    run: Any,
    session_factory: SessionFactory,
    clock: FakeClock,
    events: LogEvents,
    ended: list[AuditEnded],
) -> None:
    audit_id = await insert_audit(session_factory)

    outcome = await run(audit_id, FakeModel(transient(retry_after=30.0)))

    assert outcome == RetryIn(30.0, "model_server_error")  # never sooner than Retry-After
    assert clock.asked == [(1, 30.0)]
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts, row.lease_until) == ("queued", 1, None)
    assert row.error_code is None  # the last error is kept only when it ends the audit
    assert names(events) == ["audit_started", "audit_retry_scheduled"]
    assert ended == []

    assert isinstance(await run(audit_id, FakeModel()), Succeeded)
    assert (await load_audit(session_factory, audit_id)).attempts == 2


async def test_a_transient_model_error_on_the_last_attempt_fails_the_audit(
    run: Any,
    session_factory: SessionFactory,
    clock: FakeClock,
    events: LogEvents,
    ended: list[AuditEnded],
) -> None:
    audit_id = await insert_audit(session_factory, attempts=2, attempt_limit=3)

    outcome = await run(audit_id, FakeModel(transient()))

    assert outcome == Failed("model_server_error", written=True)
    assert clock.asked == []
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts, row.error_code) == ("failed", 3, "model_server_error")
    failed = [e for e in events.events if e["event"] == "audit_failed"]
    assert [e["attempts_exhausted"] for e in failed] == [True]
    assert ends(ended) == [(audit_id, "failed", "model_server_error")]


# Samples


def judged(*verdicts: tuple[Verdict, float], request_id: str) -> ModelOutcome:
    """An answer judging the two criteria of `insert_audit`'s audits so."""
    findings = [
        ReplyFinding(
            criterion_id=str(criterion["id"]),
            verdict=verdict,
            score=score,
            rationale=f"{verdict} by {request_id}.",
            evidence=[f"quote of {request_id}"],
        )
        for criterion, (verdict, score) in zip(CRITERIA, verdicts, strict=True)
    ]
    return replace(answer_to_nothing(), findings=findings, request_id=request_id)


def answer_to_nothing() -> ModelOutcome:
    return ModelOutcome(
        findings=[],
        summary="Judged.",
        dropped_quotes=1,
        usage=tokens(100, 20),
        request_id="req-1",
        prompt_version="v-test",
    )


async def test_the_samples_of_an_audit_are_asked_at_once_and_all_counted(
    run: Any, session_factory: SessionFactory, admission: FakeAdmission
) -> None:
    audit_id = await insert_audit(session_factory, samples=3)
    model = FakeModel(held=True)
    attempt = asyncio.create_task(run(audit_id, model))

    async def calls() -> int:
        return model.calls

    await eventually(calls, lambda n: n == 3)  # all three in flight, none answered yet
    model.release()
    outcome = await attempt

    assert isinstance(outcome, Succeeded)
    assert (outcome.result.samples, outcome.result.agreement) == (3, 1.0)
    assert [f.agreement for f in outcome.result.findings] == [1.0, 1.0]
    row = await load_audit(session_factory, audit_id)
    assert (row.prompt_tokens, row.completion_tokens) == (300, 60)
    [(_, used)] = admission.settled
    assert used.model_calls == 3


async def test_samples_that_disagree_keep_their_majority(
    run: Any, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory, samples=3)
    model = FakeModel(
        judged(("fail", 20), ("pass", 80), request_id="a"),
        judged(("pass", 90), ("pass", 70), request_id="b"),
        judged(("pass", 60), ("pass", 75), request_id="c"),
    )

    outcome = await run(audit_id, model)

    assert isinstance(outcome, Succeeded)
    first, second = outcome.result.findings
    assert (first.verdict, first.score, first.agreement) == ("pass", 75.0, 0.6667)
    assert first.rationale == "pass by b."
    assert first.evidence == ["quote of a", "quote of b", "quote of c"]
    assert (second.verdict, second.score, second.agreement) == ("pass", 75.0, 1.0)
    assert outcome.result.agreement == 0.8333
    assert outcome.result.dropped_quotes == 3
    row = await load_audit(session_factory, audit_id)
    assert row.provider_request_id == "a"  # the first sample's


async def test_a_minority_of_failed_samples_leaves_the_audit_to_the_others(
    run: Any, session_factory: SessionFactory, admission: FakeAdmission, events: LogEvents
) -> None:
    audit_id = await insert_audit(session_factory, samples=3)

    outcome = await run(audit_id, FakeModel(None, transient(), None))

    assert isinstance(outcome, Succeeded)
    assert outcome.result.samples == 2
    assert admission.errors == ["model_server_error"]
    assert admission.settled[0][1].model_calls == 3
    failed = [e for e in events.events if e["event"] == "samples_failed"]
    assert [(e["failed"], e["samples"], e["error_codes"]) for e in failed] == [
        (1, 3, ["model_server_error"])
    ]


async def test_a_majority_of_failed_samples_retries_the_attempt_if_any_failure_is_transient(
    run: Any, session_factory: SessionFactory, clock: FakeClock
) -> None:
    audit_id = await insert_audit(session_factory, samples=3)

    outcome = await run(audit_id, FakeModel(transient(), permanent(), transient(retry_after=30)))

    # The longest Retry-After of the transient failures.
    assert outcome == RetryIn(30.0, "model_server_error")
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts) == ("queued", 1)


async def test_a_majority_of_permanently_failed_samples_fails_the_audit(
    run: Any, session_factory: SessionFactory, admission: FakeAdmission
) -> None:
    audit_id = await insert_audit(session_factory, samples=3)

    outcome = await run(audit_id, FakeModel(permanent(), None, permanent()))

    assert outcome == Failed("model_refused", written=True)
    row = await load_audit(session_factory, audit_id)
    assert row.error_message is not None
    assert row.error_message.startswith("2 of 3 samples failed; the model refused")
    assert (row.prompt_tokens, row.completion_tokens) == (180, 30)  # 40 + 100 + 40, 5 + 20 + 5
    assert admission.errors == ["model_refused", "model_refused"]


# What attempts cost


async def test_a_reply_before_a_transient_error_is_charged_and_added_to_the_next_attempts(
    run: Any, session_factory: SessionFactory
) -> None:
    """A corrective call that failed with a 500 after an invalid reply: the invalid reply
    was paid for, and the audit's usage is every attempt's."""
    audit_id = await insert_audit(session_factory)
    model = FakeModel(transient().charged(tokens(300, 50)), None)

    assert isinstance(await run(audit_id, model), RetryIn)
    retried = await load_audit(session_factory, audit_id)
    assert (retried.status, retried.prompt_tokens, retried.completion_tokens) == ("queued", 300, 50)
    assert retried.cost_usd == Decimal("0.000075")

    assert isinstance(await run(audit_id, model), Succeeded)
    row = await load_audit(session_factory, audit_id)
    assert (row.prompt_tokens, row.completion_tokens) == (300 + 100, 50 + 20)
    assert row.cost_usd == Decimal("0.000075") + Decimal("0.000027")
    assert await spent_this_month(session_factory, DEFAULT_TENANT) == row.cost_usd


async def test_every_sample_is_charged_a_failed_one_too(
    run: Any, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory, samples=3)
    refused = ModelError("model_refused", "refused", transient=False).charged(tokens(40, 5))

    assert isinstance(await run(audit_id, FakeModel(None, refused, None)), Succeeded)

    row = await load_audit(session_factory, audit_id)
    assert (row.prompt_tokens, row.completion_tokens) == (100 + 40 + 100, 20 + 5 + 20)
    assert row.cost_usd == 2 * Decimal("0.000027") + Decimal("0.000009")


async def test_an_attempt_whose_call_was_never_answered_charges_nothing(
    run: Any, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory)

    assert isinstance(await run(audit_id, FakeModel(transient())), RetryIn)

    row = await load_audit(session_factory, audit_id)
    assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (None, None, None)
    assert await spent_this_month(session_factory, DEFAULT_TENANT) == 0


async def test_a_model_without_a_price_has_tokens_and_no_cost(
    run: Any, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory, model="my-own-llama")

    assert isinstance(await run(audit_id, FakeModel()), Succeeded)

    row = await load_audit(session_factory, audit_id)
    assert (row.prompt_tokens, row.completion_tokens, row.cost_usd) == (100, 20, None)
    assert await spent_this_month(session_factory, DEFAULT_TENANT) == 0


async def test_a_finish_adds_its_cost_to_its_batchs_budget(
    run: Any, session_factory: SessionFactory
) -> None:
    batch_id = await insert_batch(session_factory, max_cost_usd=Decimal(1))
    first = await insert_audit(session_factory, batch_id=batch_id, batch_index=0)
    second = await insert_audit(session_factory, batch_id=batch_id, batch_index=1)

    for audit_id in (first, second):
        assert isinstance(await run(audit_id, FakeModel()), Succeeded)

    assert (await load_batch(session_factory, batch_id)).spent_usd == 2 * Decimal("0.000027")


async def test_the_audits_of_a_batch_that_spent_its_budget_are_cancelled_without_a_call(
    run: Any, session_factory: SessionFactory, events: LogEvents
) -> None:
    batch_id = await insert_batch(
        session_factory, max_cost_usd=Decimal("0.00005"), spent_usd=Decimal("0.000054")
    )
    waiting = [
        await insert_audit(session_factory, batch_id=batch_id, batch_index=index)
        for index in range(3)
    ]
    running = await running_audit(session_factory, batch_id=batch_id, batch_index=3)
    model = FakeModel()

    outcome = await run(waiting[0], model)

    assert outcome == Skipped(budgets.BATCH_BUDGET_SPENT)
    assert model.calls == 0
    for audit_id in waiting:
        row = await load_audit(session_factory, audit_id)
        assert (row.status, row.error_code, row.attempts) == ("cancelled", "budget_exhausted", 0)
    assert (await load_audit(session_factory, running)).status == "running"  # it finishes
    batch = await load_batch(session_factory, batch_id)
    assert batch.budget_exhausted_at is not None
    assert batch.cancelled_at is not None
    assert names(events)[-1] == "batch_budget_exhausted"


async def test_an_audit_of_a_tenant_that_spent_its_budget_waits_without_a_call(
    run: Any, session_factory: SessionFactory, events: LogEvents
) -> None:
    await set_monthly_budget(session_factory, DEFAULT_TENANT, Decimal("0.0001"))
    await spend_this_month(session_factory, DEFAULT_TENANT, Decimal("0.0001"))
    audit_id = await insert_audit(session_factory)
    model = FakeModel()

    assert await run(audit_id, model) == OnHold(DEFAULT_TENANT)

    assert model.calls == 0
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts) == ("queued", 0)
    assert names(events) == ["audit_held"]

    await set_monthly_budget(session_factory, DEFAULT_TENANT, Decimal("0.0002"))
    assert isinstance(await run(audit_id, model), Succeeded)


# Attempts that lost their audit


async def start_held(run: Any, audit_id: UUID, model: FakeModel) -> "asyncio.Task[Any]":
    """An attempt whose model call is in flight, held until `model.release()`."""
    task = asyncio.create_task(run(audit_id, model))

    async def calls() -> int:
        return model.calls

    await eventually(calls, lambda n: n == 1)
    return task


async def test_a_zombies_late_answer_is_discarded(
    run: Any, session_factory: SessionFactory, events: LogEvents, ended: list[AuditEnded]
) -> None:
    audit_id = await insert_audit(session_factory)
    stalled = FakeModel(held=True)
    zombie = await start_held(run, audit_id, stalled)
    await expire_lease(session_factory, audit_id)  # as if its process had frozen
    assert isinstance(await run(audit_id, FakeModel()), Succeeded)
    finished = (await load_audit(session_factory, audit_id)).model_dump()
    events.clear()
    ended.clear()

    stalled.release()
    outcome = await zombie

    assert outcome == Succeeded(outcome.result, written=False)
    assert (await load_audit(session_factory, audit_id)).model_dump() == finished
    assert finished["attempts"] == 2
    assert names(events) == ["finish_discarded"]
    discarded = [e for e in events.events if e["event"] == "finish_discarded"]
    assert [(e["attempt"], e["would_have_been"]) for e in discarded] == [(1, "audit_succeeded")]
    assert ended == []  # the audit was ended once, by the attempt that took it over


async def cancel(engine: AsyncEngine, audit_id: UUID) -> None:
    """What `POST /audits/{id}/cancel` does to the row."""
    async with connect_to(engine) as conn:
        await audits.cancel(conn, tenant=None, audit_id=audit_id)


@pytest.mark.parametrize("reply", [None, permanent(), transient()])
async def test_a_cancel_that_arrives_during_the_model_call_wins(
    run: Any,
    engine: AsyncEngine,
    session_factory: SessionFactory,
    events: LogEvents,
    reply: ModelError | None,
    ended: list[AuditEnded],
) -> None:
    audit_id = await insert_audit(session_factory)
    model = FakeModel(reply, held=True)
    running = await start_held(run, audit_id, model)
    await cancel(engine, audit_id)
    cancelled = (await load_audit(session_factory, audit_id)).model_dump()

    model.release()  # nobody aborts this attempt: its answer arrives after the cancel
    outcome = await running

    assert isinstance(outcome, Succeeded | Failed)
    assert not outcome.written
    assert (await load_audit(session_factory, audit_id)).model_dump() == cancelled
    assert cancelled["status"] == "cancelled"
    assert names(events)[-1] == "finish_discarded"
    assert ended == []


# Interrupted attempts


@pytest.mark.parametrize(
    ("attempt_limit", "status", "logged"),
    [
        (5, "queued", ["audit_started", "audit_interrupted"]),
        (1, "failed", ["audit_started", "audit_interrupted", "audit_failed"]),
    ],
)
async def test_an_interrupted_attempt_hands_the_audit_back(
    run: Any,
    session_factory: SessionFactory,
    events: LogEvents,
    attempt_limit: int,
    status: str,
    logged: list[str],
    ended: list[AuditEnded],
) -> None:
    audit_id = await insert_audit(session_factory, attempt_limit=attempt_limit)
    stalled = await start_held(run, audit_id, FakeModel(held=True))

    stalled.cancel()  # what shutdown, arq's job timeout or an abort does to a running job
    with pytest.raises(asyncio.CancelledError):
        await stalled

    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts, row.lease_until) == (status, 1, None)
    assert row.error_code == (INTERRUPTED if status == "failed" else None)
    assert names(events) == logged
    interrupted = [e for e in events.events if e["event"] == "audit_interrupted"]
    assert [e["new_status"] for e in interrupted] == [status]
    assert ends(ended) == ([(audit_id, "failed", INTERRUPTED)] if status == "failed" else [])


# Finish writes while PostgreSQL restarts


class RefusedAfterClaim(Outage):
    """Connections refused `refusals` times from the first after the claim's."""

    def __init__(self, engine: AsyncEngine, refusals: int) -> None:
        super().__init__(engine)
        self.refusals_after_claim = refusals
        self.connections = 0

    def __call__(self) -> AbstractAsyncContextManager[StatementConnection]:
        self.connections += 1
        if self.connections == 2:
            self.refusing = self.refusals_after_claim
        return super().__call__()


async def test_a_finish_write_is_tried_again_while_postgresql_restarts(
    run: Any,
    engine: AsyncEngine,
    session_factory: SessionFactory,
    clock: FakeClock,
    events: LogEvents,
) -> None:
    audit_id = await insert_audit(session_factory)
    restarting = RefusedAfterClaim(engine, refusals=2)

    outcome = await run(audit_id, FakeModel(), connect=restarting)

    assert isinstance(outcome, Succeeded)
    assert outcome.written
    assert (await load_audit(session_factory, audit_id)).status == "succeeded"
    assert clock.slept == list(FINISH_RETRY_DELAYS_S[:2])
    assert names(events) == [
        "audit_started",
        "finish_write_retry",
        "finish_write_retry",
        "audit_succeeded",
    ]


@pytest.mark.parametrize("reply", [None, permanent(), transient()])
async def test_a_retried_finish_of_an_audit_cancelled_meanwhile_is_discarded(
    run: Any,
    engine: AsyncEngine,
    session_factory: SessionFactory,
    events: LogEvents,
    reply: ModelError | None,
) -> None:
    audit_id = await insert_audit(session_factory)
    model = FakeModel(reply, held=True)
    running = await start_held(
        partial(run, connect=RefusedAfterClaim(engine, refusals=1)), audit_id, model
    )
    await cancel(engine, audit_id)

    model.release()
    outcome = await running

    assert isinstance(outcome, Succeeded | Failed)
    assert not outcome.written
    assert (await load_audit(session_factory, audit_id)).status == "cancelled"
    assert names(events)[-2:] == ["finish_write_retry", "finish_discarded"]


async def test_a_finish_write_gives_up_once_its_tries_are_spent(
    run: Any, engine: AsyncEngine, session_factory: SessionFactory, clock: FakeClock
) -> None:
    audit_id = await insert_audit(session_factory)
    down = RefusedAfterClaim(engine, refusals=len(FINISH_RETRY_DELAYS_S) + 1)

    with pytest.raises(ConnectionRefusedError):
        await run(audit_id, FakeModel(), connect=down)

    assert clock.slept == list(FINISH_RETRY_DELAYS_S)
    # Left running: the lease runs out and the reconciler hands it to another attempt.
    assert (await load_audit(session_factory, audit_id)).status == "running"


async def test_a_finish_whose_reply_was_lost_counts_as_written(
    run: Any, settings: Settings, session_factory: SessionFactory, events: LogEvents
) -> None:
    audit_id = await insert_audit(session_factory)
    async with proxy_closing_late(settings.database_url, late_by_s=0) as proxy:
        proxied = create_engine(settings.model_copy(update={"database_url": proxy.url}))
        # PostgreSQL commits the result, then the connection breaks before the reply arrives.
        proxy.cut_reply_carrying(b"succeeded")  # the finish write's RETURNING status
        try:
            outcome = await run(audit_id, FakeModel(), connect=partial(connect_to, proxied))
        finally:
            await proxied.dispose()

    assert outcome == Succeeded(outcome.result, written=True)
    row = await load_audit(session_factory, audit_id)
    assert (row.status, row.attempts) == ("succeeded", 1)
    assert names(events) == ["audit_started", "finish_write_retry", "audit_succeeded"]
