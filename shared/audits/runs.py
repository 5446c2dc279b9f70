"""One attempt at an audit: admission → claim → the model → one fenced finish.

`run_attempt` says what became of the attempt, and the worker's task maps that to arq.
What the attempt talks to comes in as arguments: PostgreSQL (a connection factory), the
rate limits (`Admission`), the model (`AskModel`) and time (`Clock`: the backoff before
the next attempt and the pause between finish-write tries), so the whole state machine
runs in tests with a fake model and clock against a real PostgreSQL.

- Nothing is claimed until the rate limits admit the call: a job sent back then, or
  while PostgreSQL is out of reach, spends none of the audit's attempts.
- Every write after the claim is fenced (shared/audits/repository.py): an attempt that
  lost its audit (a zombie, a cancel) changes nothing and says so (`finish_discarded`).
- The model's answer is paid for, so its write is tried again while PostgreSQL restarts.
- An attempt cancelled mid-call (shutdown, arq's timeout, an abort) hands the audit
  back at once, in a write the cancellation cannot interrupt.
- Whoever runs the attempt may be told of an audit it ended (`on_ended`: the worker's
  metrics), once its terminal write is written; a `RetryIn` says why the job comes back.
- An audit of n `samples` makes its n model calls at once (shared/audits/samples.py) and
  keeps their majority (shared/audits/consensus.py); with one sample that is the call's
  own answer.
- A finish writes the audit's webhook event itself (shared/audits/repository.py); an
  audit whose end may end a batch with a callback (`ClaimedAudit.batch_notifies`) is
  finished in a transaction that writes the batch's event too (shared/webhooks/outbox.py).
- Every answered call is charged, in the attempt's finish write, whatever the outcome: a
  transient error after a reply keeps that reply's tokens and cost (`Charge`).
- An audit whose batch or tenant spent its budget is not claimed: the attempt stops its
  batch (the audits left are cancelled) or says that its tenant is on hold (`OnHold`),
  and calls no model (shared/spend/budgets.py).
"""

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any, Protocol
from uuid import UUID

import structlog

from shared import tracing
from shared.audits import repository
from shared.audits.consensus import Sample, combine
from shared.audits.findings import audit_findings
from shared.audits.repository import ClaimedAudit, RunProvenance
from shared.audits.samples import Sampled, ask_samples
from shared.audits.schemas import AuditResult
from shared.audits.scoring import build_result
from shared.audits.status import TERMINAL, AuditStatus
from shared.db import DATABASE_ERRORS, StatementConnection, is_database_unavailable
from shared.llm.errors import ModelError
from shared.llm.ratelimit import Reservation
from shared.llm.schemas import ModelOutcome
from shared.llm.usage import TokenUsage
from shared.spend import budgets
from shared.spend.charges import Charge
from shared.spend.prices import PriceTable
from shared.version import AUDITQ_VERSION
from shared.webhooks import outbox

# The name operators and dashboards know the events of an audit's job by.
log = structlog.get_logger("worker.run_audit")

INTERRUPTED = "attempt_interrupted"
RATE_LIMIT_WAIT = "rate_limit_wait"
DATABASE_UNAVAILABLE = "database_unavailable"
# A fenced write that finds PostgreSQL out of reach is tried again after these pauses:
# 7.5 s in all, within the job timeout's margin for the database (worker/timing.py).
FINISH_RETRY_DELAYS_S = (0.5, 1.0, 2.0, 4.0)
DATABASE_DOWN_DEFER_S = 2.0
_NOT_CLAIMABLE = "audit is not claimable (duplicate job, finished or cancelled)"


@dataclass(frozen=True)
class Succeeded:
    """The model answered; `written` is False when the attempt had lost the audit."""

    result: AuditResult
    written: bool


@dataclass(frozen=True)
class Failed:
    """The audit failed with `code`; `written` is False when the attempt had lost it."""

    code: str
    written: bool


@dataclass(frozen=True)
class RetryIn:
    """Run the job again in `seconds`: a transient error, no room in the rate limits,
    or PostgreSQL out of reach (the last two before any attempt was spent).

    `reason`: the transient error's code, `RATE_LIMIT_WAIT` or `DATABASE_UNAVAILABLE`.
    """

    seconds: float
    reason: str


@dataclass(frozen=True)
class Skipped:
    """Nothing to run: a duplicate job, an audit finished or cancelled meanwhile, or one
    cancelled because its batch spent its budget."""

    reason: str


@dataclass(frozen=True)
class OnHold:
    """Not run: the audit's tenant spent its monthly budget; the audit stays queued."""

    tenant: str


AttemptOutcome = Succeeded | Failed | RetryIn | Skipped | OnHold


@dataclass(frozen=True)
class AuditEnded:
    """An attempt ended its audit: its terminal write was written."""

    audit: ClaimedAudit
    status: AuditStatus  # succeeded or failed
    error_code: str | None


def _not_told(ended: AuditEnded) -> None:
    pass


@dataclass(frozen=True)
class Charged:
    """An attempt's finish write, with the charge of its answered calls, was written."""

    audit: ClaimedAudit
    charge: Charge


def _not_charged(charged: Charged) -> None:
    pass


Connect = Callable[[], AbstractAsyncContextManager[StatementConnection]]
# One sample of the model's findings on the audit: (the audit, the sample's index).
AskModel = Callable[[ClaimedAudit, int], Awaitable[ModelOutcome]]
# The new status an attempt's finish left the audit in; None when it was fenced out.
_FinishWrite = Callable[[StatementConnection], Awaitable[AuditStatus | None]]


class RetryDelay(Protocol):
    def __call__(self, attempt: int, *, retry_after: float | None = None) -> float: ...


@dataclass(frozen=True)
class Clock:
    """Where time enters an attempt."""

    # How long after this failed attempt (1, 2, …) the next may start, given `Retry-After`.
    retry_delay: RetryDelay
    # The pause between two tries of a finish write.
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep


class Admission(Protocol):
    """The rate limits around the model call of an attempt."""

    async def reserve(self, audit_id: UUID) -> Reservation | RetryIn:
        """The call's share of its model's limits, or when to come back for it."""
        ...

    async def settle(self, audit: ClaimedAudit, reserved: Reservation, used: Sampled) -> None:
        """Count what the answered calls used beyond their reservation."""
        ...

    async def on_model_error(self, audit: ClaimedAudit, error: ModelError) -> None:
        """Learn from a failed call (a provider's 429 pauses the model for everyone)."""
        ...


async def run_attempt(
    audit_id: UUID,
    *,
    connect: Connect,
    lease: timedelta,
    admission: Admission,
    ask_model: AskModel,
    clock: Clock,
    prices: PriceTable,
    on_ended: Callable[[AuditEnded], None] = _not_told,
    on_charged: Callable[[Charged], None] = _not_charged,
) -> AttemptOutcome:
    """Run one attempt of the audit, unless it is not there to claim or must wait.

    Re-raises `CancelledError` once the audit is handed back. `on_ended` is told when
    the attempt ends the audit, whichever way (a cancelled last attempt included);
    `on_charged`, when it wrote the charge of answered calls (the worker's metrics).
    """
    started_ns = time.time_ns()  # the attempt's span starts here, once the claim names its trace
    try:
        reserved = await admission.reserve(audit_id)
        if isinstance(reserved, RetryIn):
            return reserved
        async with connect() as conn:
            audit = await repository.claim(conn, audit_id=audit_id, lease=lease)
            if audit is None:
                return await _not_claimed(conn, audit_id)
    except DATABASE_ERRORS as exc:
        if not is_database_unavailable(exc):
            raise
        # Back in a moment, rather than failed with a traceback and left for the
        # reconciler, as every job picked up during a restart would be.
        log.warning("database_unavailable", retry_in_s=DATABASE_DOWN_DEFER_S)
        return RetryIn(DATABASE_DOWN_DEFER_S, DATABASE_UNAVAILABLE)
    structlog.contextvars.bind_contextvars(
        tenant=audit.tenant, request_id=audit.request_id, attempt=audit.attempts
    )
    log.info("audit_started", model=audit.model, criteria=len(audit.criteria))
    attempt = _Attempt(audit, connect, clock, prices, on_ended, on_charged)
    with tracing.attempt_span(
        audit.trace_context, audit_id=audit.id, attempt=audit.attempts, started_ns=started_ns
    ) as span:
        outcome = await _run_claimed(attempt, ask_model, admission=admission, reserved=reserved)
        span.set_attribute("auditq.outcome", _OUTCOME_NAMES[type(outcome)])
    return outcome


_OUTCOME_NAMES = {Succeeded: "succeeded", Failed: "failed", RetryIn: "retry"}


async def _not_claimed(conn: StatementConnection, audit_id: UUID) -> Skipped | OnHold:
    """Why the claim took nothing: a duplicate job or an audit gone, or a budget."""
    held = await repository.held_by(conn, audit_id=audit_id)
    if held is None:
        log.info("job_skipped", reason=_NOT_CLAIMABLE)
        return Skipped(_NOT_CLAIMABLE)
    if held.budget == "tenant":
        log.info("audit_held", tenant=held.tenant, reason="tenant_budget_exhausted")
        return OnHold(held.tenant)
    assert held.batch_id is not None, "only an audit of a batch is held by a batch's budget"
    async with conn.transaction():  # the cancels, and the events they may send
        cancelled = await budgets.stop_batch(conn, batch_id=held.batch_id)
    log.info("batch_budget_exhausted", batch_id=str(held.batch_id), cancelled=len(cancelled))
    return Skipped(budgets.BATCH_BUDGET_SPENT)


async def _run_claimed(
    attempt: "_Attempt", ask_model: AskModel, *, admission: Admission, reserved: Reservation
) -> Succeeded | Failed | RetryIn:
    """The model call of a claimed attempt, and its one fenced finish."""
    audit = attempt.audit

    async def on_error(error: ModelError) -> None:
        await _count(admission.on_model_error(audit, error))

    try:
        sampled = await ask_samples(audit.samples, partial(ask_model, audit), on_error=on_error)
    except ModelError as error:
        return await attempt.model_failed(error)
    except asyncio.CancelledError:
        await asyncio.shield(attempt.interrupted())
        raise
    # The answer is written before the rate limits hear of it: it is paid for, and a
    # Redis hiccup while counting must not leave the audit running until its lease ends.
    answered = await attempt.model_answered(sampled)
    await _count(admission.settle(audit, reserved, sampled))
    return answered


async def _count(accounting: Awaitable[None]) -> None:
    """Tell the rate limits what a call did; a failure to count is logged, never raised.

    The limits are shared bookkeeping in Redis: missing one call's count costs at worst
    a 429 from the provider later, which the attempt's retries absorb.
    """
    try:
        await accounting
    except Exception as exc:  # whatever the limiter's store raises, the audit goes on
        log.warning("rate_limit_accounting_failed", error=type(exc).__name__)


@dataclass(frozen=True)
class _Attempt:
    """The finishes of a claimed attempt, each one fenced write."""

    audit: ClaimedAudit
    connect: Connect
    clock: Clock
    prices: PriceTable
    on_ended: Callable[[AuditEnded], None]
    on_charged: Callable[[Charged], None]

    def _charge(self, usage: TokenUsage | None) -> Charge | None:
        return Charge.of(usage, model=self.audit.model, prices=self.prices)

    async def model_answered(self, sampled: Sampled) -> Succeeded:
        audit = self.audit
        charge = self._charge(sampled.usage)
        result = _result(audit, sampled)
        provenance = _provenance(sampled.answered[0])

        async def succeed(conn: StatementConnection) -> AuditStatus | None:
            written = await repository.succeed(
                conn,
                audit_id=audit.id,
                attempt=audit.attempts,
                result=result,
                charge=charge,
                provenance=provenance,
            )
            return AuditStatus.SUCCEEDED if written else None

        written = await self._finish(succeed, charge=charge) == AuditStatus.SUCCEEDED
        self._ended(
            written,
            AuditStatus.SUCCEEDED,
            score=result.score,
            verdict=result.verdict,
            dropped_quotes=result.dropped_quotes,
            samples=len(sampled.answered),
            agreement=result.agreement,
            invalid_replies=[kind for o in sampled.answered for kind in o.invalid_replies],
            prompt_tokens=sampled.usage.prompt_tokens,
            completion_tokens=sampled.usage.completion_tokens,
            cost_usd=_usd(charge),
            provider_request_id=provenance.provider_request_id,
        )
        return Succeeded(result, written=written)

    async def model_failed(self, error: ModelError) -> Failed | RetryIn:
        if not error.transient:
            return await self._fail(error)
        status = await self._requeue_or_fail(
            code=error.code, message=error.message, charge=self._charge(error.usage)
        )
        if status == AuditStatus.QUEUED:
            delay = self.clock.retry_delay(self.audit.attempts, retry_after=error.retry_after)
            log.warning("audit_retry_scheduled", error_code=error.code, retry_in_s=round(delay, 2))
            return RetryIn(delay, error.code)
        written = status is not None
        self._ended(written, AuditStatus.FAILED, error_code=error.code, attempts_exhausted=True)
        return Failed(error.code, written=written)

    async def interrupted(self) -> None:
        """Cancelled by shutdown, arq's timeout or an abort: give the attempt back at once.

        A cancelled audit is no longer `running`, so the fenced write leaves it alone.
        """
        message = "the attempt was interrupted (worker shutdown or job timeout)"
        status = await self._requeue_or_fail(code=INTERRUPTED, message=message)
        log.warning("audit_interrupted", new_status=status)
        if status == AuditStatus.FAILED:  # that was the last attempt: the audit ends here
            self._ended(True, AuditStatus.FAILED, error_code=INTERRUPTED, attempts_exhausted=True)

    async def _fail(self, error: ModelError) -> Failed:
        audit = self.audit
        charge = self._charge(error.usage)

        async def fail(conn: StatementConnection) -> AuditStatus | None:
            written = await repository.fail(
                conn,
                audit_id=audit.id,
                attempt=audit.attempts,
                code=error.code,
                message=error.message,
                charge=charge,
            )
            return AuditStatus.FAILED if written else None

        written = await self._finish(fail, charge=charge) == AuditStatus.FAILED
        self._ended(written, AuditStatus.FAILED, error_code=error.code, permanent=True)
        return Failed(error.code, written=written)

    def _ended(self, written: bool, status: AuditStatus, **fields: Any) -> None:
        """Log the attempt's terminal write (`audit_<status>`); tell `on_ended` if written."""
        _log_finish(written, f"audit_{status}", **fields)
        if written:
            self.on_ended(AuditEnded(self.audit, status, fields.get("error_code")))

    async def _requeue_or_fail(
        self, *, code: str, message: str, charge: Charge | None = None
    ) -> AuditStatus | None:
        """`queued` or `failed` as attempts remain; None when the attempt had lost the audit."""
        audit = self.audit

        async def requeue_or_fail(conn: StatementConnection) -> AuditStatus | None:
            return await repository.requeue_or_fail(
                conn,
                audit_id=audit.id,
                attempt=audit.attempts,
                code=code,
                message=message,
                charge=charge,
            )

        status = await self._finish(requeue_or_fail, charge=charge)
        return status if status in (AuditStatus.QUEUED, AuditStatus.FAILED) else None

    async def _finish(
        self, write: _FinishWrite, *, charge: Charge | None = None
    ) -> AuditStatus | None:
        """One fenced write of the attempt's outcome, tried again while PostgreSQL restarts.

        The model's answer is paid for: a restart must not throw it away and leave the audit
        `running` until its lease runs out. The fence makes a second try harmless: a write
        that committed before its connection broke finds the audit no longer running, and
        the status the attempt left is read instead, so that write still counts, and is
        logged, as written. `charge`, written with it, is told to `on_charged` once written.
        """
        with tracing.finish_span() as span:
            status = await self._finish_retrying(write)
            # `discarded`: the attempt had lost the audit (a zombie's, a cancelled one's).
            span.set_attribute("auditq.status", status or "discarded")
        if status is not None and charge is not None:
            self.on_charged(Charged(self.audit, charge))
        return status

    async def _finish_retrying(self, write: _FinishWrite) -> AuditStatus | None:
        for tries, delay in enumerate(FINISH_RETRY_DELAYS_S):
            try:
                return await self._finish_once(write, retried=tries > 0)
            except DATABASE_ERRORS as exc:
                if not is_database_unavailable(exc):
                    raise
                log.warning("finish_write_retry", error=type(exc).__name__, retry_in_s=delay)
                await self.clock.sleep(delay)
        return await self._finish_once(write, retried=True)

    async def _finish_once(self, write: _FinishWrite, *, retried: bool) -> AuditStatus | None:
        async with self.connect() as conn:
            if self.audit.batch_notifies:
                status = await self._write_with_batch(conn, write)
            else:
                status = await write(conn)
            if status is not None or not retried:
                return status
            return await repository.status_left_by(
                conn, audit_id=self.audit.id, attempt=self.audit.attempts
            )

    async def _write_with_batch(
        self, conn: StatementConnection, write: _FinishWrite
    ) -> AuditStatus | None:
        """The write, and the event of the batch it may end, committed together."""
        async with conn.transaction():
            status = await write(conn)
            if status in TERMINAL:
                await outbox.batches_may_have_ended(conn, [self.audit.batch_id])
        return status


def _result(audit: ClaimedAudit, sampled: Sampled) -> AuditResult:
    """The audit's result from its answered samples: their majority, scored by auditq."""
    consensus = combine([Sample(audit_findings(o.findings), o.summary) for o in sampled.answered])
    return build_result(
        findings=consensus.findings,
        criteria=audit.criteria,
        summary=consensus.summary,
        pass_threshold=audit.pass_threshold,
        dropped_quotes=sum(o.dropped_quotes for o in sampled.answered),
        agreement=consensus.agreement,
        samples=len(sampled.answered),
    )


def _provenance(first: ModelOutcome) -> RunProvenance:
    """What produced the result: the first answered sample's call (the samples send one
    request, so they differ only in the provider's request id, and in the snapshot if the
    provider switched between them)."""
    return RunProvenance(
        served_model=first.served_model,
        prompt_version=first.prompt_version,
        schema_sha256=first.schema_sha256,
        provider_request_id=first.request_id,
        temperature=first.temperature,
        seed=first.seed,
        auditq_version=AUDITQ_VERSION,
    )


def _usd(charge: Charge | None) -> float | None:
    """A charge's USD for a log line."""
    return None if charge is None or charge.cost_usd is None else float(charge.cost_usd)


def _log_finish(written: bool, event: str, **fields: Any) -> None:
    if written:
        log.info(event, **fields)
    else:
        log.info(
            "finish_discarded", would_have_been=event, reason="attempt no longer owns the audit"
        )
