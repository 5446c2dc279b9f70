"""The worker's transitions of an audit (DESIGN §3), each one conditional UPDATE.

- `claim` takes a queued audit, or a running one whose lease expired, and counts
  the attempt. Nothing claimed means the job is a duplicate. `next_call`, a read
  just before it, tells the rate limiter what the attempt will ask the model.
- Every later write is fenced by `status = 'running' AND attempts = <attempt>`,
  so the late write of a zombie, a cancelled run or an earlier attempt changes
  nothing: an audit reaches exactly one terminal state, written once.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.audits.models import Audit
from shared.audits.schemas import AuditResult
from shared.queue import defer_run

WORKER_LOST = "worker_lost"


def _lease_expired() -> sa.ColumnElement[bool]:
    return col(Audit.lease_until) < sa.func.now()


def _claimable() -> sa.ColumnElement[bool]:
    return sa.and_(
        sa.or_(
            col(Audit.status) == "queued",
            sa.and_(col(Audit.status) == "running", _lease_expired()),
        ),
        col(Audit.attempts) < col(Audit.attempt_limit),
    )


@dataclass(frozen=True)
class NextCall:
    """The model an attempt will call, and the size of the audit's text it will send."""

    model: str
    text_chars: int
    criteria: int


async def next_call(session: AsyncSession, *, audit_id: UUID) -> NextCall | None:
    """What a claim of this audit would ask the model; None when there is nothing to claim.

    It reads the content's size, not the content: `octet_length` takes it from the stored
    value's header, without fetching or decompressing it, and it is at least the length
    in characters.
    """
    text_chars = (
        sa.func.octet_length(col(Audit.subject))
        + sa.func.octet_length(col(Audit.content))
        + sa.func.octet_length(sa.cast(col(Audit.criteria), sa.Text))
    )
    stmt = sa.select(
        col(Audit.model),
        text_chars.label("text_chars"),
        sa.func.jsonb_array_length(col(Audit.criteria)).label("criteria"),
    ).where(col(Audit.id) == audit_id, _claimable())
    row = (await session.execute(stmt)).one_or_none()
    return None if row is None else NextCall(row.model, row.text_chars, row.criteria)


async def claim(session: AsyncSession, *, audit_id: UUID, lease: timedelta) -> Audit | None:
    """Start an attempt: `running`, `attempts + 1`, leased until now + `lease`."""
    stmt = (
        sa.update(Audit)
        .where(col(Audit.id) == audit_id, _claimable())
        .values(
            status="running",
            attempts=col(Audit.attempts) + 1,
            lease_until=sa.func.now() + lease,
            started_at=sa.func.coalesce(col(Audit.started_at), sa.func.now()),
            updated_at=sa.func.now(),
        )
        .returning(Audit)
        .execution_options(populate_existing=True)
    )
    audit: Audit | None = (await session.execute(stmt)).scalar_one_or_none()
    return audit


async def _finish(
    session: AsyncSession, *, audit_id: UUID, attempt: int, values: dict[str, Any]
) -> str | None:
    """The fenced write of an attempt's outcome; the new status, or None if fenced out."""
    stmt = (
        sa.update(Audit)
        .where(
            col(Audit.id) == audit_id,
            col(Audit.status) == "running",
            col(Audit.attempts) == attempt,
        )
        .values(**values, lease_until=None, updated_at=sa.func.now())
        .returning(col(Audit.status))
    )
    status: str | None = (await session.execute(stmt)).scalar_one_or_none()
    return status


async def succeed(
    session: AsyncSession,
    *,
    audit_id: UUID,
    attempt: int,
    result: AuditResult,
    prompt_tokens: int,
    completion_tokens: int,
    prompt_version: str,
    provider_request_id: str | None,
) -> bool:
    """Record the result; False when this attempt no longer owns the audit."""
    status = await _finish(
        session,
        audit_id=audit_id,
        attempt=attempt,
        values={
            "status": "succeeded",
            "result": result.model_dump(mode="json"),
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "prompt_version": prompt_version,
            "provider_request_id": provider_request_id,
            "error_code": None,
            "error_message": None,
            "finished_at": sa.func.now(),
        },
    )
    return status is not None


async def fail(
    session: AsyncSession, *, audit_id: UUID, attempt: int, code: str, message: str
) -> bool:
    """End the audit as failed with a stable error code; False when fenced out."""
    status = await _finish(
        session,
        audit_id=audit_id,
        attempt=attempt,
        values={
            "status": "failed",
            "error_code": code,
            "error_message": message,
            "finished_at": sa.func.now(),
        },
    )
    return status is not None


def _queued_or_failed(*, code: str, message: str) -> dict[str, Any]:
    """Back to `queued` while attempts remain, else `failed` with this error."""
    exhausted = col(Audit.attempts) >= col(Audit.attempt_limit)
    return {
        "status": sa.case((exhausted, "failed"), else_="queued"),
        "error_code": sa.case((exhausted, code), else_=None),
        "error_message": sa.case((exhausted, message), else_=None),
        "finished_at": sa.case((exhausted, sa.func.now()), else_=None),
    }


async def requeue_or_fail(
    session: AsyncSession, *, audit_id: UUID, attempt: int, code: str, message: str
) -> str | None:
    """After a transient error: back to `queued`, or `failed` once attempts are used up.

    Returns the new status, or None when this attempt no longer owns the audit.
    The last error is kept on the audit only when it ends it.
    """
    return await _finish(
        session,
        audit_id=audit_id,
        attempt=attempt,
        values=_queued_or_failed(code=code, message=message),
    )


async def recover_expired_leases(session: AsyncSession) -> tuple[list[UUID], list[UUID]]:
    """Audits whose worker vanished: re-queue them, or fail those on their last attempt.

    Returns (requeued, failed) ids; the re-queued ones are enqueued after commit.
    """
    message = "the worker running the last attempt stopped (crash or timeout)"
    stmt = (
        sa.update(Audit)
        .where(col(Audit.status) == "running", _lease_expired())
        .values(
            **_queued_or_failed(code=WORKER_LOST, message=message),
            lease_until=None,
            updated_at=sa.func.now(),
        )
        .returning(col(Audit.id), col(Audit.status))
    )
    rows = (await session.execute(stmt)).all()
    requeued = [row.id for row in rows if row.status == "queued"]
    for audit_id in requeued:
        defer_run(session, audit_id)
    return requeued, [row.id for row in rows if row.status == "failed"]


QueuedKey = tuple[datetime, UUID]


async def queued_before(
    session: AsyncSession, *, age: timedelta, limit: int, after: QueuedKey | None = None
) -> list[tuple[UUID, QueuedKey]]:
    """Queued audits untouched for `age`, candidates for a lost job, with their scan keys.

    They come in (created_at, id) order starting after `after`, so a caller can
    walk a backlog of any size a page at a time (the status index serves it).
    """
    conditions = [col(Audit.status) == "queued", col(Audit.updated_at) < sa.func.now() - age]
    if after is not None:
        conditions.append(sa.tuple_(col(Audit.created_at), col(Audit.id)) > sa.tuple_(*after))
    stmt = (
        sa.select(col(Audit.id), col(Audit.created_at))
        .where(*conditions)
        .order_by(col(Audit.created_at), col(Audit.id))
        .limit(limit)
    )
    rows = (await session.execute(stmt)).all()
    return [(row.id, (row.created_at, row.id)) for row in rows]
