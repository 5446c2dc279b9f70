"""The worker's transitions of an audit (DESIGN §3), each one conditional UPDATE.

- `claim` takes a queued audit, or a running one whose lease expired, and counts
  the attempt. Nothing claimed means the job is a duplicate. `next_call`, a read
  just before it, tells the rate limiter what the attempt will ask the model.
- Every later write is fenced by `status = 'running' AND attempts = <attempt>`,
  so the late write of a zombie, a cancelled run or an earlier attempt changes
  nothing: an audit reaches exactly one terminal state, written once.

The claim and the finishes run once per attempt, each a single statement: they take
a `StatementConnection` and commit on their own, in SQL written once here and sent by
the driver. Built per call through the ORM, with BEGIN and COMMIT around each, they
cost the worker more CPU than the rest of an audit (bench/RESULTS.md).
"""

from dataclasses import dataclass
from datetime import datetime, timedelta
from uuid import UUID

import sqlalchemy as sa
from pydantic import TypeAdapter
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.audits.models import Audit
from shared.audits.schemas import AuditResult, Criterion
from shared.db import StatementConnection
from shared.queue import defer_run

WORKER_LOST = "worker_lost"

_LEASE_EXPIRED = "lease_until < now()"
_CLAIMABLE = (
    f"(status = 'queued' OR (status = 'running' AND {_LEASE_EXPIRED})) AND attempts < attempt_limit"
)
_EXHAUSTED = "attempts >= attempt_limit"


def _queued_or_failed(*, code: str, message: str) -> str:
    """Back to `queued` while attempts remain, else `failed` with this error (placeholders)."""
    return (
        f"status = CASE WHEN {_EXHAUSTED} THEN 'failed' ELSE 'queued' END, "
        f"error_code = CASE WHEN {_EXHAUSTED} THEN {code} END, "
        f"error_message = CASE WHEN {_EXHAUSTED} THEN {message} END, "
        f"finished_at = CASE WHEN {_EXHAUSTED} THEN now() END"
    )


def _finish(assignments: str) -> str:
    """The fenced write of an attempt's outcome ($1 the audit, $2 the attempt)."""
    return (
        f"UPDATE audit SET {assignments}, lease_until = NULL, updated_at = now() "
        "WHERE id = $1 AND status = 'running' AND attempts = $2 RETURNING status"
    )


# `octet_length` takes the size from the stored value's header, without fetching or
# decompressing it, and it is at least the length in characters.
_NEXT_CALL = (
    "SELECT model, octet_length(subject) + octet_length(content) "
    "+ octet_length(criteria::text) AS text_chars, jsonb_array_length(criteria) AS criteria "
    f"FROM audit WHERE id = $1 AND {_CLAIMABLE}"
)
_CLAIM = (
    "UPDATE audit SET status = 'running', attempts = attempts + 1, lease_until = now() + $2, "
    "started_at = coalesce(started_at, now()), updated_at = now() "
    f"WHERE id = $1 AND {_CLAIMABLE} "
    # The criteria as JSON text, which pydantic validates in one pass.
    "RETURNING attempts, model, subject, content, criteria::text, pass_threshold, request_id"
)
_SUCCEED = _finish(
    "status = 'succeeded', result = $3, prompt_tokens = $4, completion_tokens = $5, "
    "prompt_version = $6, provider_request_id = $7, error_code = NULL, error_message = NULL, "
    "finished_at = now()"
)
_FAIL = _finish(
    "status = 'failed', error_code = $3, error_message = $4, prompt_tokens = $5, "
    "completion_tokens = $6, finished_at = now()"
)
_REQUEUE_OR_FAIL = _finish(_queued_or_failed(code="$3::text", message="$4::text"))

_STATUS_LEFT_BY = "SELECT status FROM audit WHERE id = $1 AND attempts = $2 AND status <> 'running'"

_CRITERIA = TypeAdapter(list[Criterion])


@dataclass(frozen=True)
class NextCall:
    """The model an attempt will call, and the size of the audit's text it will send."""

    model: str
    text_chars: int
    criteria: int


async def next_call(conn: StatementConnection, *, audit_id: UUID) -> NextCall | None:
    """What a claim of this audit would ask the model; None when there is nothing to claim.

    It reads the content's size, not the content.
    """
    row = await conn.fetchrow(_NEXT_CALL, audit_id)
    return None if row is None else NextCall(row["model"], row["text_chars"], row["criteria"])


@dataclass(frozen=True)
class ClaimedAudit:
    """What an attempt needs of the audit it claimed."""

    id: UUID
    attempts: int
    model: str
    subject: str
    content: str
    criteria: list[Criterion]
    pass_threshold: float
    request_id: str | None


async def claim(
    conn: StatementConnection, *, audit_id: UUID, lease: timedelta
) -> ClaimedAudit | None:
    """Start an attempt: `running`, `attempts + 1`, leased until now + `lease`."""
    row = await conn.fetchrow(_CLAIM, audit_id, lease)
    if row is None:
        return None
    return ClaimedAudit(
        id=audit_id,
        attempts=row["attempts"],
        model=row["model"],
        subject=row["subject"],
        content=row["content"],
        criteria=_CRITERIA.validate_json(row["criteria"]),
        pass_threshold=row["pass_threshold"],
        request_id=row["request_id"],
    )


async def succeed(
    conn: StatementConnection,
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
    status = await conn.fetchval(
        _SUCCEED,
        audit_id,
        attempt,
        result.model_dump_json(),
        prompt_tokens,
        completion_tokens,
        prompt_version,
        provider_request_id,
    )
    return status is not None


async def fail(
    conn: StatementConnection,
    *,
    audit_id: UUID,
    attempt: int,
    code: str,
    message: str,
    usage: tuple[int, int] | None = None,
) -> bool:
    """End the audit as failed with a stable error code; False when fenced out.

    `usage`: the tokens of the attempt's answered calls (a refusal, an invalid reply),
    paid for all the same; None when no call was answered.
    """
    prompt_tokens, completion_tokens = usage or (None, None)
    status = await conn.fetchval(
        _FAIL, audit_id, attempt, code, message, prompt_tokens, completion_tokens
    )
    return status is not None


async def requeue_or_fail(
    conn: StatementConnection, *, audit_id: UUID, attempt: int, code: str, message: str
) -> str | None:
    """After a transient error: back to `queued`, or `failed` once attempts are used up.

    Returns the new status, or None when this attempt no longer owns the audit.
    The last error is kept on the audit only when it ends it.
    """
    status: str | None = await conn.fetchval(_REQUEUE_OR_FAIL, audit_id, attempt, code, message)
    return status


async def status_left_by(conn: StatementConnection, *, audit_id: UUID, attempt: int) -> str | None:
    """The status `attempt` left the audit in, if it was the last attempt and has ended.

    For a fenced write retried after its connection broke: the first try may have
    committed. No other writer ends a live attempt (the reconciler waits for its lease
    to run out; a cancel leaves `cancelled`), so a match is that first try.
    """
    status: str | None = await conn.fetchval(_STATUS_LEFT_BY, audit_id, attempt)
    return status


_RECOVER_EXPIRED_LEASES = sa.text(
    f"UPDATE audit SET {_queued_or_failed(code=':code', message=':message')}, "
    "lease_until = NULL, updated_at = now() "
    f"WHERE status = 'running' AND {_LEASE_EXPIRED} RETURNING id, status"
).columns(sa.column("id", sa.Uuid), sa.column("status", sa.Text))


async def recover_expired_leases(session: AsyncSession) -> tuple[list[UUID], list[UUID]]:
    """Audits whose worker vanished: re-queue them, or fail those on their last attempt.

    Returns (requeued, failed) ids; the re-queued ones are enqueued after commit.
    """
    message = "the worker running the last attempt stopped (crash or timeout)"
    parameters = {"code": WORKER_LOST, "message": message}
    rows = (await session.execute(_RECOVER_EXPIRED_LEASES, parameters)).all()
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
