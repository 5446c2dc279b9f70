"""What clients can do with audits.

Functions take the session first and never commit. Submitting and reading one
audit take a `StatementConnection` instead: one statement each, committed on its
own, in SQL sent by the driver (see shared/audits/records.py).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from shared.audits import records
from shared.audits.exceptions import (
    AuditNotCancellable,
    AuditNotFound,
    AuditNotRetryable,
)
from shared.audits.records import AUDIT as _AUDIT
from shared.audits.records import AuditColumns
from shared.audits.schemas import AuditCreate, AuditStatus, Criterion
from shared.config import get_settings
from shared.db import StatementConnection
from shared.idempotency import Created, replay, request_hash
from shared.pagination import encode_cursor, keyset_page, split_page
from shared.queue import defer_abort, defer_run
from shared.rubrics import service as rubrics
from shared.rubrics.exceptions import UnknownRubric
from shared.rubrics.models import Rubric

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
    conn: StatementConnection,
    *,
    data: AuditCreate,
    request_id: str | None = None,
    idempotency_key: str | None = None,
) -> Created[AuditColumns]:
    """Record a queued audit in one INSERT, committed on its own; its job is sent after it.

    With an `idempotency_key` already used, the earlier audit is returned instead.
    The rubric it names, if any, is read first: rubric versions never change, so the
    two statements need no common transaction.
    """
    digest = None if idempotency_key is None else request_hash(data)
    if idempotency_key is not None and (earlier := await _replay(conn, idempotency_key, digest)):
        return earlier
    row = new_row(
        data,
        criteria=await _criteria_of(conn, data),
        request_id=request_id,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    insert = records.insert_unless_key_taken(tuple(row))
    inserted = await conn.fetchrow(insert, *records.parameters(row))
    if inserted is None:  # a concurrent request with the same key won the insert
        assert idempotency_key is not None
        winner = await _replay(conn, idempotency_key, digest)
        assert winner is not None
        return winner
    defer_run(conn, row["id"])
    return Created(records.new_audit(row, **inserted))


async def _replay(
    conn: StatementConnection, key: str, digest: str | None
) -> Created[AuditColumns] | None:
    """The audit an earlier request with this key created, if any (same body or 422)."""
    record = await conn.fetchrow(records.SELECT_BY_IDEMPOTENCY_KEY, key)
    if record is None:
        return None
    earlier = records.columns_of(record)
    assert digest is not None
    return replay(earlier, stored_hash=earlier["request_hash"], new_hash=digest, key=key)


async def _criteria_of(conn: StatementConnection, data: AuditCreate) -> ResolvedCriteria:
    if data.criteria is not None:
        return ResolvedCriteria(criteria=list(data.criteria))
    assert data.rubric is not None  # AuditCreate demands one of the two
    rubric = await rubrics.find(conn, name=data.rubric, version=data.rubric_version)
    return _snapshot(rubric, data.rubric, data.rubric_version)


async def get(conn: StatementConnection, *, audit_id: UUID) -> AuditColumns | None:
    """One audit by id, or None."""
    record = await conn.fetchrow(records.SELECT_BY_ID, audit_id)
    return None if record is None else records.columns_of(record)


async def get_or_raise(conn: StatementConnection, *, audit_id: UUID) -> AuditColumns:
    audit = await get(conn, audit_id=audit_id)
    if audit is None:
        raise _not_found(audit_id)
    return audit


def _not_found(audit_id: UUID) -> AuditNotFound:
    return AuditNotFound(f"No audit has id {audit_id}.")


async def list_page(
    session: AsyncSession, *, filters: AuditFilters, limit: int, cursor: str | None
) -> tuple[list[AuditColumns], str | None]:
    """A page of audits, newest first, and the cursor of the next page (None at the end)."""
    stmt = keyset_page(
        _filtered(sa.select(_AUDIT), filters),
        created_at=_AUDIT.c.created_at,
        row_id=_AUDIT.c.id,
        limit=limit,
        cursor=cursor,
    )
    rows = [dict(row) for row in (await session.execute(stmt)).mappings()]
    return split_page(
        rows, limit=limit, cursor_of=lambda a: encode_cursor(a["created_at"], a["id"])
    )


def _filtered(stmt: sa.Select[Any], filters: AuditFilters) -> sa.Select[Any]:
    c = _AUDIT.c
    conditions = [
        c.status.in_(filters.status) if filters.status else None,
        c.batch_id == filters.batch_id if filters.batch_id else None,
        c.rubric_name == filters.rubric if filters.rubric else None,
        c.created_at > filters.created_after if filters.created_after else None,
        c.created_at < filters.created_before if filters.created_before else None,
    ]
    return stmt.where(*(condition for condition in conditions if condition is not None))


async def cancel(session: AsyncSession, *, audit_id: UUID) -> AuditColumns:
    """Cancel a queued or running audit; a running job is aborted after commit."""
    audit = await _transition(
        session,
        audit_id=audit_id,
        allowed=UNFINISHED,
        values={"status": "cancelled", "finished_at": sa.func.now(), "lease_until": None},
    )
    if audit is None:
        status = await _status_or_raise(session, audit_id)
        raise AuditNotCancellable(
            f"Audit {audit_id} is already {status}; only queued or running audits "
            "can be cancelled.",
            audit_status=status,
        )
    defer_abort(session, audit_id)
    return audit


async def retry(session: AsyncSession, *, audit_id: UUID) -> AuditColumns:
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
            "attempt_limit": _AUDIT.c.attempts + get_settings().max_attempts,
            "result": None,
            "error_code": None,
            "error_message": None,
            "started_at": None,
            "finished_at": None,
            "lease_until": None,
        },
    )
    if audit is None:
        status = await _status_or_raise(session, audit_id)
        raise AuditNotRetryable(
            f"Audit {audit_id} is {status}; only failed or cancelled audits can be retried.",
            audit_status=status,
        )
    defer_run(session, audit_id)
    return audit


async def _transition(
    session: AsyncSession,
    *,
    audit_id: UUID,
    allowed: Sequence[str],
    values: dict[str, Any],
) -> AuditColumns | None:
    """One conditional UPDATE: the audit moves only if it is in an allowed status."""
    stmt = (
        sa.update(_AUDIT)
        .where(_AUDIT.c.id == audit_id, _AUDIT.c.status.in_(allowed))
        .values(**values, updated_at=sa.func.now())
        .returning(*_AUDIT.c)
    )
    row = (await session.execute(stmt)).mappings().one_or_none()
    return None if row is None else dict(row)


async def _status_or_raise(session: AsyncSession, audit_id: UUID) -> str:
    status: str | None = await session.scalar(
        sa.select(_AUDIT.c.status).where(_AUDIT.c.id == audit_id)
    )
    if status is None:
        raise _not_found(audit_id)
    return status


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
        rubric = await rubrics.get(session, name=data.rubric, version=data.rubric_version)
        cache[wanted] = _snapshot(rubric, *wanted)
    return cache[wanted]


def _snapshot(rubric: Rubric | None, name: str, version: int | None) -> ResolvedCriteria:
    """The criteria of the rubric asked for, or UnknownRubric if there is no such version."""
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
