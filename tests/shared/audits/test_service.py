"""The audits service: create, read, list, cancel and retry, against real PostgreSQL and Redis."""

from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits import repository
from shared.audits import service as audits
from shared.audits.exceptions import AuditNotCancellable, AuditNotFound, AuditNotRetryable
from shared.audits.models import Audit
from shared.audits.repository import AuditFilters
from shared.audits.schemas import AuditCreate
from shared.audits.status import AuditStatus
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, statement_connection
from shared.queue import audit_job_id, send_pending, transaction
from shared.rubrics import service as rubrics
from shared.rubrics.exceptions import UnknownRubric
from shared.rubrics.schemas import RubricCreate
from shared.tenants.caller import DEFAULT_TENANT
from tests.factories import audit_request
from tests.fixtures.jobs import queued_job_ids
from tests.rows import insert_audit, load_audit

KEY = b"a key of 32 bytes for the cursors"

pytestmark = pytest.mark.usefixtures("clean")

T0 = datetime(2026, 1, 1, tzinfo=UTC)
SETTINGS = Settings()


async def unlimited(tenant: str) -> None:
    """No tenant has a quota here."""
    return


def request(**overrides: Any) -> AuditCreate:
    return AuditCreate.model_validate(audit_request(**overrides))


async def queued(redis: ArqRedis, settings: Settings) -> set[str]:
    return await queued_job_ids(redis, settings)


async def has_job(redis: ArqRedis, audit_id: UUID) -> bool:
    return bool(await redis.exists(job_key_prefix + audit_job_id(audit_id)))


# create


async def test_create_records_a_queued_audit_and_sends_its_job_after_its_insert(
    engine: AsyncEngine, session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    async with statement_connection(engine) as conn:
        created = await audits.create(
            conn, tenant=DEFAULT_TENANT, settings=SETTINGS, data=request(), request_id="req-1"
        )
        audit = created.resource
        # Deferred, not sent: the caller sends it once the statement has returned.
        assert await queued(redis, settings) == set()
        await send_pending(conn, redis)

    assert not created.replayed
    assert await queued(redis, settings) == {audit_job_id(audit.id)}
    stored = await load_audit(session_factory, audit.id)
    assert (stored.status, stored.attempts, stored.attempt_limit) == ("queued", 0, 5)
    assert stored.request_id == "req-1"
    assert stored.model == "gpt-4o-mini"
    assert [c["id"] for c in stored.criteria or []] == ["claims_substantiated", "no_vague_terms"]
    assert stored.metadata_ == {"sku": "TB-01"}
    # What create returns is the stored row, column by column.
    columns = sa.inspect(Audit).column_attrs
    assert asdict(audit) == {
        column.columns[0].name: getattr(stored, column.key) for column in columns
    }


async def test_create_budgets_max_attempts(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    async with statement_connection(engine) as conn:
        three = Settings(max_attempts=3)
        audit = (
            await audits.create(conn, tenant=DEFAULT_TENANT, settings=three, data=request())
        ).resource

    assert (await load_audit(session_factory, audit.id)).attempt_limit == 3


async def test_create_with_a_rubric_snapshots_its_latest_or_named_version(
    engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    async with session_factory() as session:
        for description in ("first", "second"):
            criteria = [{"id": "tone", "description": description}]
            await rubrics.publish(
                SessionStatements(session),
                tenant=DEFAULT_TENANT,
                settings=SETTINGS,
                data=RubricCreate(name="house_style", description="", criteria=criteria),
            )
        await session.commit()

    async with statement_connection(engine) as conn:
        latest = (
            await audits.create(
                conn,
                tenant=DEFAULT_TENANT,
                settings=SETTINGS,
                data=request(criteria=None, rubric="house_style"),
            )
        ).resource
        first = (
            await audits.create(
                conn,
                tenant=DEFAULT_TENANT,
                settings=SETTINGS,
                data=request(criteria=None, rubric="house_style", rubric_version=1),
            )
        ).resource
        with pytest.raises(UnknownRubric, match="no version 3"):
            await audits.create(
                conn,
                tenant=DEFAULT_TENANT,
                settings=SETTINGS,
                data=request(criteria=None, rubric="house_style", rubric_version=3),
            )

    assert (latest.rubric_version, latest.criteria[0]["description"]) == (2, "second")
    assert (first.rubric_version, first.criteria[0]["description"]) == (1, "first")


# get


async def test_get_or_raise(engine: AsyncEngine, session_factory: SessionFactory) -> None:
    audit_id = await insert_audit(session_factory)
    unknown = uuid4()

    async with statement_connection(engine) as conn:
        assert (await audits.get_or_raise(conn, audit_id=audit_id, tenant=None)).id == audit_id
        assert await repository.get(conn, unknown, tenant=None) is None
        with pytest.raises(AuditNotFound, match=str(unknown)):
            await audits.get_or_raise(conn, audit_id=unknown, tenant=None)


# cancel


@pytest.mark.parametrize("status", ["queued", "running"])
async def test_cancel_an_unfinished_audit_and_abort_its_job_after_commit(
    session_factory: SessionFactory, redis: ArqRedis, status: str
) -> None:
    audit_id = await insert_audit(session_factory, status=status, lease_until=T0)

    async with transaction(session_factory, redis) as session:
        audit = await audits.cancel(SessionStatements(session), tenant=None, audit_id=audit_id)
        assert await redis.zscore(abort_jobs_ss, audit_job_id(audit_id)) is None

    assert await redis.zscore(abort_jobs_ss, audit_job_id(audit_id)) is not None
    stored = await load_audit(session_factory, audit_id)
    assert (audit.status, stored.status) == ("cancelled", "cancelled")
    assert stored.finished_at is not None
    assert stored.lease_until is None


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_cancel_a_finished_audit_changes_nothing(
    session_factory: SessionFactory, status: str
) -> None:
    audit_id = await insert_audit(session_factory, status=status, finished_at=T0)

    async with session_factory() as session:
        with pytest.raises(AuditNotCancellable, match=f"already {status}") as raised:
            await audits.cancel(SessionStatements(session), tenant=None, audit_id=audit_id)

    assert raised.value.extra == {"audit_status": status}
    stored = await load_audit(session_factory, audit_id)
    assert (stored.status, stored.finished_at) == (status, T0)


async def test_cancel_an_unknown_audit(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        with pytest.raises(AuditNotFound):
            await audits.cancel(SessionStatements(session), tenant=None, audit_id=uuid4())


# retry


FAILED_AFTER_FIVE = {
    "status": "failed",
    "attempts": 5,
    "attempt_limit": 5,
    "error_code": "rate_limited",
    "error_message": "429",
    "result": None,
    "started_at": T0,
    "finished_at": T0 + timedelta(seconds=9),
}


@pytest.mark.parametrize("status", ["failed", "cancelled"])
async def test_retry_requeues_with_a_fresh_budget_and_keeps_attempts(
    session_factory: SessionFactory, redis: ArqRedis, settings: Settings, status: str
) -> None:
    audit_id = await insert_audit(session_factory, **{**FAILED_AFTER_FIVE, "status": status})

    async with transaction(session_factory, redis) as session:
        audit = await audits.retry(
            SessionStatements(session),
            quota=unlimited,
            tenant=None,
            audit_id=audit_id,
            settings=SETTINGS,
        )
        assert await queued(redis, settings) == set()

    assert await queued(redis, settings) == {audit_job_id(audit_id)}
    stored = await load_audit(session_factory, audit_id)
    assert audit.status == stored.status == "queued"
    # `attempts` fences late writes of earlier runs, so it keeps counting; the budget moves.
    assert (stored.attempts, stored.attempt_limit) == (5, 5 + settings.max_attempts)
    assert (stored.error_code, stored.error_message, stored.result) == (None, None, None)
    assert (stored.started_at, stored.finished_at, stored.lease_until) == (None, None, None)


async def test_retry_moves_the_budget_by_max_attempts(session_factory: SessionFactory) -> None:
    audit_id = await insert_audit(session_factory, **{**FAILED_AFTER_FIVE, "attempts": 7})

    async with session_factory() as session:
        two = Settings(max_attempts=2)
        await audits.retry(
            SessionStatements(session),
            quota=unlimited,
            tenant=None,
            audit_id=audit_id,
            settings=two,
        )
        await session.commit()

    stored = await load_audit(session_factory, audit_id)
    assert (stored.attempts, stored.attempt_limit) == (7, 9)


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
async def test_retry_of_an_audit_that_did_not_fail_changes_nothing(
    session_factory: SessionFactory, redis: ArqRedis, settings: Settings, status: str
) -> None:
    audit_id = await insert_audit(session_factory, status=status, attempts=1)

    async with transaction(session_factory, redis) as session:
        with pytest.raises(AuditNotRetryable, match=f"is {status}") as raised:
            await audits.retry(
                SessionStatements(session),
                quota=unlimited,
                tenant=None,
                audit_id=audit_id,
                settings=SETTINGS,
            )

    assert raised.value.extra == {"audit_status": status}
    assert await queued(redis, settings) == set()
    stored = await load_audit(session_factory, audit_id)
    assert (stored.status, stored.attempts, stored.attempt_limit) == (status, 1, 5)


async def test_retry_twice_is_refused_the_second_time(session_factory: SessionFactory) -> None:
    audit_id = await insert_audit(session_factory, **FAILED_AFTER_FIVE)

    async with session_factory() as session:
        await audits.retry(
            SessionStatements(session),
            quota=unlimited,
            tenant=None,
            audit_id=audit_id,
            settings=SETTINGS,
        )
        with pytest.raises(AuditNotRetryable, match="is queued"):
            await audits.retry(
                SessionStatements(session),
                quota=unlimited,
                tenant=None,
                audit_id=audit_id,
                settings=SETTINGS,
            )


async def test_retry_an_unknown_audit(session_factory: SessionFactory) -> None:
    async with session_factory() as session:
        with pytest.raises(AuditNotFound):
            await audits.retry(
                SessionStatements(session),
                quota=unlimited,
                tenant=None,
                audit_id=uuid4(),
                settings=SETTINGS,
            )


# list_page


BATCH = uuid4()


@pytest.fixture
async def listed(session_factory: SessionFactory) -> list[UUID]:
    """Six audits, newest last, spread over statuses, a batch, a rubric and time."""
    async with session_factory() as session:
        await session.execute(
            sa.text("INSERT INTO batch (id, tenant, metadata) VALUES (:id, 'default', '{}')"),
            {"id": BATCH},
        )
        await session.commit()
    shapes: list[tuple[AuditStatus, UUID | None, str | None]] = [
        (AuditStatus.QUEUED, None, None),
        (AuditStatus.FAILED, BATCH, "green_claims"),
        (AuditStatus.SUCCEEDED, BATCH, None),
        (AuditStatus.CANCELLED, None, "green_claims"),
        (AuditStatus.FAILED, None, None),
        (AuditStatus.RUNNING, BATCH, "green_claims"),
    ]
    return [
        await insert_audit(
            session_factory,
            status=status,
            batch_id=batch_id,
            rubric_name=rubric,
            rubric_version=1 if rubric else None,
            created_at=T0 + timedelta(minutes=index),
        )
        for index, (status, batch_id, rubric) in enumerate(shapes)
    ]


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        (AuditFilters(), [5, 4, 3, 2, 1, 0]),
        (AuditFilters(status=[AuditStatus.FAILED]), [4, 1]),
        (
            AuditFilters(status=[AuditStatus.FAILED, AuditStatus.QUEUED, AuditStatus.RUNNING]),
            [5, 4, 1, 0],
        ),
        (AuditFilters(batch_id=BATCH), [5, 2, 1]),
        (AuditFilters(rubric="green_claims"), [5, 3, 1]),
        (AuditFilters(created_after=T0 + timedelta(minutes=2)), [5, 4, 3]),
        (AuditFilters(created_before=T0 + timedelta(minutes=2)), [1, 0]),
        (
            AuditFilters(
                status=[AuditStatus.FAILED, AuditStatus.RUNNING],
                batch_id=BATCH,
                rubric="green_claims",
                created_after=T0,
                created_before=T0 + timedelta(minutes=5),
            ),
            [1],
        ),
        (AuditFilters(batch_id=uuid4()), []),
    ],
)
async def test_list_filters(
    session_factory: SessionFactory,
    listed: list[UUID],
    filters: AuditFilters,
    expected: list[int],
) -> None:
    async with session_factory() as session:
        rows, cursor = await audits.list_page(
            SessionStatements(session), filters=filters, limit=50, cursor=None, cursor_key=KEY
        )

    assert [row.id for row in rows] == [listed[index] for index in expected]
    assert cursor is None


async def test_list_pages_with_the_cursor(
    session_factory: SessionFactory, listed: list[UUID]
) -> None:
    filters = AuditFilters(status=[AuditStatus.FAILED, AuditStatus.QUEUED, AuditStatus.RUNNING])
    pages: list[list[UUID]] = []
    cursor: str | None = None
    async with session_factory() as session:
        while True:
            rows, cursor = await audits.list_page(
                SessionStatements(session), filters=filters, limit=3, cursor=cursor, cursor_key=KEY
            )
            pages.append([row.id for row in rows])
            if cursor is None:
                break

    assert pages == [[listed[5], listed[4], listed[1]], [listed[0]]]
