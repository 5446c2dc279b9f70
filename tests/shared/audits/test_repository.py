"""The audit repository's transitions: claim, fenced finishes, lease recovery."""

from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits import recovery, repository
from shared.audits import service as audits
from shared.audits.models import Audit
from shared.audits.priority import Priority
from shared.audits.schemas import AuditResult, Criterion
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope, statement_connection
from shared.queue import audit_job_id, transaction
from shared.spend.charges import Charge
from shared.tenants.caller import DEFAULT_TENANT
from tests.fixtures.jobs import queued_job_ids
from tests.rows import ago, expire_lease, insert_audit, load_audit, running_audit

pytestmark = pytest.mark.usefixtures("clean")

LEASE = timedelta(seconds=30)
RESULT = AuditResult(score=80.0, verdict="pass", pass_threshold=70.0, summary="Fine.", findings=[])
PROVENANCE = repository.RunProvenance(
    served_model="gpt-4o-mini-2024-07-18",
    prompt_version="v-test",
    schema_sha256="ab" * 32,
    provider_request_id="req-1",
    temperature=0.0,
    seed=42,
    auditq_version="0.1.0",
)


def snapshot(audit: Audit) -> dict[str, Any]:
    return audit.model_dump()


async def db_now(factory: SessionFactory) -> datetime:
    async with factory() as session:
        now: datetime = (await session.execute(sa.select(sa.func.now()))).scalar_one()
    return now


async def claim(engine: AsyncEngine, audit_id: UUID) -> repository.ClaimedAudit | None:
    async with statement_connection(engine) as conn:
        return await repository.claim(conn, audit_id=audit_id, lease=LEASE)


async def succeed(engine: AsyncEngine, audit_id: UUID, *, attempt: int) -> bool:
    async with statement_connection(engine) as conn:
        return await repository.succeed(
            conn,
            audit_id=audit_id,
            attempt=attempt,
            result=RESULT,
            charge=Charge(prompt_tokens=120, completion_tokens=30, cost_usd=Decimal("0.000036")),
            provenance=PROVENANCE,
        )


async def fail(engine: AsyncEngine, audit_id: UUID, *, attempt: int) -> bool:
    async with statement_connection(engine) as conn:
        return await repository.fail(
            conn, audit_id=audit_id, attempt=attempt, code="model_refused", message="no"
        )


async def requeue_or_fail(engine: AsyncEngine, audit_id: UUID, *, attempt: int) -> str | None:
    async with statement_connection(engine) as conn:
        return await repository.requeue_or_fail(
            conn,
            audit_id=audit_id,
            attempt=attempt,
            code="model_server_error",
            message="the provider failed",
        )


# claim


async def test_claim_starts_the_first_attempt_of_a_queued_audit(
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    audit_id = await insert_audit(session_factory)

    claimed = await claim(engine, audit_id)

    assert claimed is not None
    stored = await load_audit(session_factory, audit_id)
    assert (stored.status, stored.attempts) == ("running", 1)
    assert stored.started_at is not None
    assert stored.lease_until is not None
    assert stored.lease_until - stored.started_at == LEASE
    assert claimed == repository.ClaimedAudit(
        id=audit_id,
        tenant=DEFAULT_TENANT,
        attempts=1,
        model=stored.model,
        subject=stored.subject,
        content=stored.content,
        criteria=[Criterion.model_validate(c) for c in stored.criteria or []],
        pass_threshold=stored.pass_threshold,
        samples=stored.samples,
        request_id=stored.request_id,
        trace_context=stored.trace_context,
        priority=Priority(stored.priority),
        created_at=stored.created_at,
        batch_id=None,
        batch_notifies=False,
    )


async def test_claim_takes_over_a_running_audit_whose_lease_expired(
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    audit_id = await running_audit(session_factory, attempts=2, lease_s=-1)
    before = await load_audit(session_factory, audit_id)

    claimed = await claim(engine, audit_id)

    assert claimed is not None
    assert claimed.attempts == 3
    stored = await load_audit(session_factory, audit_id)
    assert (stored.status, stored.attempts) == ("running", 3)
    assert stored.started_at == before.started_at  # the audit started with its first attempt
    assert stored.lease_until is not None
    assert stored.lease_until > await db_now(session_factory)


async def test_claim_leaves_a_running_audit_with_a_live_lease_alone(
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    audit_id = await running_audit(session_factory, attempts=1, lease_s=60)
    before = await load_audit(session_factory, audit_id)

    assert await claim(engine, audit_id) is None
    assert snapshot(await load_audit(session_factory, audit_id)) == snapshot(before)


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_claim_never_reopens_a_finished_audit(
    engine: AsyncEngine, session_factory: SessionFactory, status: str
) -> None:
    # Even an expired lease left behind does not make a finished audit claimable.
    audit_id = await insert_audit(
        session_factory, status=status, attempts=1, lease_until=ago(60), finished_at=ago(30)
    )
    before = await load_audit(session_factory, audit_id)

    assert await claim(engine, audit_id) is None
    assert snapshot(await load_audit(session_factory, audit_id)) == snapshot(before)


@pytest.mark.parametrize(
    ("status", "lease_s"), [("queued", None), ("running", -1)], ids=["queued", "expired-lease"]
)
async def test_claim_refuses_an_audit_whose_attempts_are_used_up(
    engine: AsyncEngine, session_factory: SessionFactory, status: str, lease_s: float | None
) -> None:
    lease_until = None if lease_s is None else ago(-lease_s)
    audit_id = await insert_audit(
        session_factory, status=status, attempts=3, attempt_limit=3, lease_until=lease_until
    )
    before = await load_audit(session_factory, audit_id)

    assert await claim(engine, audit_id) is None
    assert snapshot(await load_audit(session_factory, audit_id)) == snapshot(before)


async def test_claim_of_an_unknown_audit_is_none(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    assert await claim(engine, uuid4()) is None


async def test_only_one_of_two_claims_wins(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory)

    first = await claim(engine, audit_id)
    second = await claim(engine, audit_id)

    assert first is not None
    assert second is None
    assert (await load_audit(session_factory, audit_id)).attempts == 1


# fenced finishes


async def test_succeed_records_the_result_usage_and_provenance(
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    audit_id = await insert_audit(session_factory)
    claimed = await claim(engine, audit_id)
    assert claimed is not None

    assert await succeed(engine, audit_id, attempt=claimed.attempts) is True

    audit = await load_audit(session_factory, audit_id)
    assert audit.status == "succeeded"
    assert audit.result == RESULT.model_dump(mode="json")
    assert (audit.prompt_tokens, audit.completion_tokens) == (120, 30)
    assert audit.cost_usd == Decimal("0.000036")
    assert (audit.prompt_version, audit.provider_request_id) == ("v-test", "req-1")
    assert (audit.served_model, audit.schema_sha256) == ("gpt-4o-mini-2024-07-18", "ab" * 32)
    assert (audit.temperature, audit.seed, audit.auditq_version) == (0.0, 42, "0.1.0")
    assert (audit.error_code, audit.error_message, audit.lease_until) == (None, None, None)
    assert audit.finished_at is not None
    assert audit.started_at is not None
    assert audit.finished_at >= audit.started_at


async def test_a_zombies_late_succeed_changes_nothing(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory)
    zombie = await claim(engine, audit_id)
    assert zombie is not None
    await expire_lease(session_factory, audit_id)
    successor = await claim(engine, audit_id)
    assert successor is not None
    assert successor.attempts == 2
    assert await fail(engine, audit_id, attempt=successor.attempts) is True
    after_successor = await load_audit(session_factory, audit_id)

    assert await succeed(engine, audit_id, attempt=zombie.attempts) is False
    assert await fail(engine, audit_id, attempt=zombie.attempts) is False
    assert await requeue_or_fail(engine, audit_id, attempt=zombie.attempts) is None

    assert snapshot(await load_audit(session_factory, audit_id)) == snapshot(after_successor)


async def test_an_earlier_attempt_cannot_finish_while_a_later_one_runs(
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    audit_id = await running_audit(session_factory, attempts=2)
    before = await load_audit(session_factory, audit_id)

    assert await succeed(engine, audit_id, attempt=1) is False
    assert snapshot(await load_audit(session_factory, audit_id)) == snapshot(before)


async def test_a_run_cancelled_meanwhile_cannot_succeed(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    audit_id = await insert_audit(session_factory)
    claimed = await claim(engine, audit_id)
    assert claimed is not None
    async with session_scope(session_factory) as session:
        await audits.cancel(SessionStatements(session), tenant=None, audit_id=audit_id)
    cancelled = await load_audit(session_factory, audit_id)

    assert await succeed(engine, audit_id, attempt=claimed.attempts) is False

    audit = await load_audit(session_factory, audit_id)
    assert audit.status == "cancelled"
    assert audit.result is None
    assert snapshot(audit) == snapshot(cancelled)


async def test_fail_ends_the_audit_with_its_code(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    audit_id = await running_audit(session_factory, attempts=1)

    assert await fail(engine, audit_id, attempt=1) is True

    audit = await load_audit(session_factory, audit_id)
    assert (audit.status, audit.error_code, audit.error_message) == (
        "failed",
        "model_refused",
        "no",
    )
    assert audit.finished_at is not None
    assert audit.lease_until is None
    assert audit.result is None


# requeue_or_fail


async def test_a_transient_error_below_the_limit_requeues(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    audit_id = await running_audit(session_factory, attempts=2, attempt_limit=3)

    assert await requeue_or_fail(engine, audit_id, attempt=2) == "queued"

    audit = await load_audit(session_factory, audit_id)
    assert (audit.status, audit.attempts) == ("queued", 2)  # the attempt stays counted
    assert (audit.error_code, audit.error_message, audit.finished_at) == (None, None, None)
    assert audit.lease_until is None
    # And it can be claimed again, for its last attempt.
    claimed = await claim(engine, audit_id)
    assert claimed is not None
    assert claimed.attempts == 3


async def test_a_transient_error_on_the_last_attempt_fails_with_its_code(
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    audit_id = await running_audit(session_factory, attempts=3, attempt_limit=3)

    assert await requeue_or_fail(engine, audit_id, attempt=3) == "failed"

    audit = await load_audit(session_factory, audit_id)
    assert (audit.status, audit.attempts) == ("failed", 3)
    assert (audit.error_code, audit.error_message) == ("model_server_error", "the provider failed")
    assert audit.finished_at is not None
    assert audit.lease_until is None


# recover_expired_leases


async def test_expired_leases_are_requeued_and_enqueued_or_failed_on_the_last_attempt(
    session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    retryable = await running_audit(session_factory, attempts=1, attempt_limit=3, lease_s=-1)
    last = await running_audit(
        session_factory, attempts=3, attempt_limit=3, lease_s=-1, model="judge-1"
    )
    live = await running_audit(session_factory, attempts=1, lease_s=60)
    queued = await insert_audit(session_factory)
    live_before = await load_audit(session_factory, live)

    async with transaction(session_factory, redis) as session:
        requeued, failed = await recovery.recover_expired_leases(SessionStatements(session))

    assert requeued == [retryable]
    assert [(lost.run.audit_id, lost.model) for lost in failed] == [(last, "judge-1")]
    audit = await load_audit(session_factory, retryable)
    assert (audit.status, audit.attempts, audit.lease_until) == ("queued", 1, None)
    assert audit.error_code is None
    audit = await load_audit(session_factory, last)
    assert (audit.status, audit.error_code) == ("failed", recovery.WORKER_LOST)
    assert audit.error_message
    assert audit.finished_at is not None
    assert snapshot(await load_audit(session_factory, live)) == snapshot(live_before)
    assert (await load_audit(session_factory, queued)).status == "queued"
    # Only the re-queued audit got a job, sent after the commit.
    assert await queued_job_ids(redis, settings) == {audit_job_id(retryable)}
    assert await redis.exists(job_key_prefix + audit_job_id(last)) == 0


async def test_recovering_twice_changes_nothing_the_second_time(
    session_factory: SessionFactory,
) -> None:
    await running_audit(session_factory, attempts=1, lease_s=-1)
    async with session_scope(session_factory) as session:
        first = await recovery.recover_expired_leases(SessionStatements(session))
    async with session_scope(session_factory) as session:
        second = await recovery.recover_expired_leases(SessionStatements(session))

    assert len(first[0]) == 1
    assert second == ([], [])


# queued_before


async def test_queued_before_lists_old_queued_audits_oldest_first(
    session_factory: SessionFactory,
) -> None:
    oldest = await insert_audit(session_factory, created_at=ago(300), updated_at=ago(300))
    older = await insert_audit(session_factory, created_at=ago(120), updated_at=ago(120))
    await insert_audit(session_factory, updated_at=ago(5))  # too young
    await running_audit(session_factory, updated_at=ago(300))
    await insert_audit(session_factory, status="failed", updated_at=ago(300))
    await insert_audit(session_factory, status="cancelled", updated_at=ago(300))

    async with session_scope(session_factory) as session:
        found = await recovery.queued_before(
            SessionStatements(session), age=timedelta(seconds=60), limit=10
        )
        first_only = await recovery.queued_before(
            SessionStatements(session), age=timedelta(seconds=60), limit=1
        )

    assert [audit_id for _, audit_id in found] == [oldest, older]
    assert [audit_id for _, audit_id in first_only] == [oldest]


async def test_queued_before_walks_a_backlog_page_by_page(
    session_factory: SessionFactory,
) -> None:
    backlog = [
        await insert_audit(session_factory, created_at=ago(600 - i), updated_at=ago(300))
        for i in range(7)
    ]
    seen: list[UUID] = []
    after = None
    async with session_scope(session_factory) as session:
        while page := await recovery.queued_before(
            SessionStatements(session), age=timedelta(seconds=60), limit=3, after=after
        ):
            seen += [audit_id for _, audit_id in page]
            after = page[-1]

    assert seen == backlog
