"""What clients can do with audits. Functions take the session first and never commit."""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.audits.exceptions import (
    AuditNotCancellable,
    AuditNotFound,
    AuditNotRetryable,
)
from shared.audits.models import Audit
from shared.audits.schemas import AuditCreate, AuditStatus, Criterion
from shared.config import get_settings
from shared.db import metadata
from shared.idempotency import Created, replay, request_hash
from shared.pagination import encode_cursor, keyset_page, split_page
from shared.queue import defer_abort, defer_run
from shared.rubrics import service as rubrics
from shared.rubrics.exceptions import UnknownRubric

UNFINISHED: tuple[AuditStatus, ...] = ("queued", "running")
RETRYABLE: tuple[AuditStatus, ...] = ("failed", "cancelled")


@dataclass(frozen=True)
class AuditFilters:
    status: Sequence[AuditStatus] = ()
    batch_id: UUID | None = None
    rubric: str | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


@dataclass(frozen=True)
class ResolvedCriteria:
    """The criteria snapshot an audit runs with, and the rubric it came from, if any."""

    criteria: list[Criterion]
    rubric_name: str | None = None
    rubric_version: int | None = None


def new_row(
    data: AuditCreate,
    *,
    criteria: ResolvedCriteria,
    batch_id: UUID | None = None,
    batch_index: int | None = None,
    request_id: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
) -> dict[str, Any]:
    """The column values of a new queued audit, for single and multi-row inserts."""
    settings = get_settings()
    return {
        "id": uuid4(),
        "status": "queued",
        "subject": data.subject,
        "content": data.content,
        "criteria": [c.model_dump() for c in criteria.criteria],
        "rubric_name": criteria.rubric_name,
        "rubric_version": criteria.rubric_version,
        "model": data.model or settings.openai_model,
        "metadata": data.metadata,
        "pass_threshold": data.pass_threshold,
        "batch_id": batch_id,
        "batch_index": batch_index,
        "attempts": 0,
        "attempt_limit": settings.max_attempts,
        "request_id": request_id,
        "idempotency_key": idempotency_key,
        "request_hash": request_hash,
    }


async def create(
    session: AsyncSession,
    *,
    data: AuditCreate,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> Created[Audit]:
    """Record a queued audit (its job is sent once the transaction commits).

    With an `idempotency_key` already used, the earlier audit is returned instead.
    """
    digest = request_hash(data)
    if idempotency_key is not None and (earlier := await _replay(session, idempotency_key, digest)):
        return earlier
    row = new_row(
        data,
        criteria=await resolve_criteria(session, data=data),
        request_id=request_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    audit = await _insert_unless_key_taken(session, row)
    if audit is None:  # a concurrent request with the same key won the insert
        assert idempotency_key is not None
        winner = await _replay(session, idempotency_key, digest)
        assert winner is not None
        return winner
    defer_run(session, audit.id)
    return Created(audit)


async def _replay(session: AsyncSession, key: str, digest: str) -> Created[Audit] | None:
    """The audit an earlier request with this key created, if any (same body or 422)."""
    stmt = sa.select(Audit).where(col(Audit.idempotency_key) == key)
    earlier: Audit | None = (await session.execute(stmt)).scalar_one_or_none()
    if earlier is None:
        return None
    return replay(earlier, stored_hash=earlier.request_hash, new_hash=digest, key=key)


_AUDIT = metadata.tables["audit"]
# Built once, with the row as parameters: the hot path of POST /audits. An ORM
# insert built per request (`values(row)`, RETURNING the entity) cost more Python
# than everything else the request does; this one is compiled once and cached.
_INSERT_UNLESS_KEY_TAKEN = (
    pg_insert(_AUDIT)
    .on_conflict_do_nothing(
        index_elements=["idempotency_key"],
        index_where=_AUDIT.c.idempotency_key.is_not(None),
    )
    .returning(_AUDIT.c.created_at, _AUDIT.c.updated_at)
)


async def _insert_unless_key_taken(session: AsyncSession, row: dict[str, Any]) -> Audit | None:
    """The new audit, or None when a concurrent request with the same key inserted first."""
    inserted = (await session.execute(_INSERT_UNLESS_KEY_TAKEN, row)).one_or_none()
    if inserted is None:
        return None
    return Audit(**_to_columns(row), created_at=inserted.created_at, updated_at=inserted.updated_at)


def _to_columns(row: dict[str, Any]) -> dict[str, Any]:
    """`metadata` is reserved on declarative models, so the attribute is `metadata_`."""
    return {("metadata_" if key == "metadata" else key): value for key, value in row.items()}


async def get(session: AsyncSession, *, audit_id: UUID) -> Audit | None:
    """One audit by id, or None."""
    return await session.get(Audit, audit_id)


async def get_or_raise(session: AsyncSession, *, audit_id: UUID) -> Audit:
    audit = await get(session, audit_id=audit_id)
    if audit is None:
        raise AuditNotFound(f"No audit has id {audit_id}.")
    return audit


async def list_page(
    session: AsyncSession, *, filters: AuditFilters, limit: int, cursor: str | None
) -> tuple[list[Audit], str | None]:
    """A page of audits, newest first, and the cursor of the next page (None at the end)."""
    stmt = keyset_page(
        _filtered(sa.select(Audit), filters),
        created_at=col(Audit.created_at),
        row_id=col(Audit.id),
        limit=limit,
        cursor=cursor,
    )
    rows = list((await session.execute(stmt)).scalars())
    return split_page(rows, limit=limit, cursor_of=lambda a: encode_cursor(a.created_at, a.id))


def _filtered(stmt: sa.Select[Any], filters: AuditFilters) -> sa.Select[Any]:
    conditions = [
        col(Audit.status).in_(filters.status) if filters.status else None,
        col(Audit.batch_id) == filters.batch_id if filters.batch_id else None,
        col(Audit.rubric_name) == filters.rubric if filters.rubric else None,
        col(Audit.created_at) > filters.created_after if filters.created_after else None,
        col(Audit.created_at) < filters.created_before if filters.created_before else None,
    ]
    return stmt.where(*(c for c in conditions if c is not None))


async def cancel(session: AsyncSession, *, audit_id: UUID) -> Audit:
    """Cancel a queued or running audit; a running job is aborted after commit."""
    audit = await _transition(
        session,
        audit_id=audit_id,
        allowed=UNFINISHED,
        values={"status": "cancelled", "finished_at": sa.func.now(), "lease_until": None},
    )
    if audit is None:
        current = await get_or_raise(session, audit_id=audit_id)
        raise AuditNotCancellable(
            f"Audit {audit_id} is already {current.status}; only queued or running audits "
            "can be cancelled.",
            audit_status=current.status,
        )
    defer_abort(session, audit.id)
    return audit


async def retry(session: AsyncSession, *, audit_id: UUID) -> Audit:
    """Queue a failed or cancelled audit again, with a fresh budget of attempts.

    `attempts` keeps counting (it fences late writes of earlier runs); the budget
    moves instead: the audit may now run `MAX_ATTEMPTS` more times.
    """
    audit = await _transition(
        session,
        audit_id=audit_id,
        allowed=RETRYABLE,
        values={
            "status": "queued",
            "attempt_limit": col(Audit.attempts) + get_settings().max_attempts,
            "result": None,
            "error_code": None,
            "error_message": None,
            "started_at": None,
            "finished_at": None,
            "lease_until": None,
        },
    )
    if audit is None:
        current = await get_or_raise(session, audit_id=audit_id)
        raise AuditNotRetryable(
            f"Audit {audit_id} is {current.status}; only failed or cancelled audits can be "
            "retried.",
            audit_status=current.status,
        )
    defer_run(session, audit.id)
    return audit


async def _transition(
    session: AsyncSession,
    *,
    audit_id: UUID,
    allowed: Sequence[str],
    values: dict[str, Any],
) -> Audit | None:
    """One conditional UPDATE: the audit moves only if it is in an allowed status."""
    stmt = (
        sa.update(Audit)
        .where(col(Audit.id) == audit_id, col(Audit.status).in_(allowed))
        .values(**values, updated_at=sa.func.now())
        .returning(Audit)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


RubricCache = dict[tuple[str, int | None], ResolvedCriteria]


async def resolve_criteria(
    session: AsyncSession, *, data: AuditCreate, cache: RubricCache | None = None
) -> ResolvedCriteria:
    """The criteria an audit will run with: inline ones, or a snapshot of a rubric's.

    A batch passes a `cache`, so each rubric it names is read once, not per item.
    """
    if data.criteria is not None:
        return ResolvedCriteria(criteria=list(data.criteria))
    assert data.rubric is not None  # AuditCreate demands one of the two
    cache = {} if cache is None else cache
    wanted = (data.rubric, data.rubric_version)
    if wanted not in cache:
        cache[wanted] = await _rubric_criteria(session, *wanted)
    return cache[wanted]


async def _rubric_criteria(
    session: AsyncSession, name: str, version: int | None
) -> ResolvedCriteria:
    rubric = await rubrics.get(session, name=name, version=version)
    if rubric is None:
        raise UnknownRubric(_unknown_rubric(name, version), rubric=name)
    return ResolvedCriteria(
        criteria=[Criterion.model_validate(c) for c in rubric.criteria],
        rubric_name=rubric.name,
        rubric_version=rubric.version,
    )


def _unknown_rubric(name: str, version: int | None) -> str:
    if version is None:
        return f"No rubric is named {name!r}; publish it with POST /rubrics first."
    return f"Rubric {name!r} has no version {version}."
