"""Batches of audits: one transaction in, one NDJSON stream out.

Functions take the session first and never commit. A batch's counts, status and
finish time are derived from its audits on every read, so they cannot drift.
"""

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.audits import service as audits
from shared.audits.models import Audit
from shared.audits.schemas import AuditCreate
from shared.batches.exceptions import BatchNotFound
from shared.batches.models import Batch
from shared.batches.schemas import BatchCounts, BatchCreate
from shared.db import SessionFactory, metadata
from shared.idempotency import Created, replay, request_hash
from shared.pagination import encode_cursor, keyset_page, split_page
from shared.queue import defer_abort, defer_run
from shared.rubrics.exceptions import UnknownRubric

UNFINISHED = ("queued", "running")


@dataclass(frozen=True)
class BatchSummary:
    """A batch with what its audits say about it."""

    batch: Batch
    counts: BatchCounts
    prompt_tokens: int
    completion_tokens: int
    last_finished_at: datetime | None

    @property
    def status(self) -> str:
        if self.counts.queued or self.counts.running:
            return "running"
        return "cancelled" if self.batch.cancelled_at else "completed"

    @property
    def finished_at(self) -> datetime | None:
        return None if self.status == "running" else self.last_finished_at


async def create(
    session: AsyncSession,
    *,
    data: BatchCreate,
    idempotency_key: str | None = None,
    request_id: str | None = None,
) -> Created[BatchSummary]:
    """Record the batch and all its audits in one statement each; jobs go after commit."""
    digest = request_hash(data)
    if idempotency_key is not None and (earlier := await _replay(session, idempotency_key, digest)):
        return earlier
    batch = await _insert_batch(
        session, data=data, key=idempotency_key, digest=digest, request_id=request_id
    )
    if batch is None:  # a concurrent request with the same key won the insert
        assert idempotency_key is not None
        winner = await _replay(session, idempotency_key, digest)
        assert winner is not None
        return winner
    await _insert_audits(session, batch_id=batch.id, items=data.audits, request_id=request_id)
    return Created(await summarize(session, batch))


async def _replay(session: AsyncSession, key: str, digest: str) -> Created[BatchSummary] | None:
    """The batch an earlier request with this key created, if any (same body or 422)."""
    stmt = sa.select(Batch).where(col(Batch.idempotency_key) == key)
    earlier: Batch | None = (await session.execute(stmt)).scalar_one_or_none()
    if earlier is None:
        return None
    summary = await summarize(session, earlier)
    return replay(summary, stored_hash=earlier.request_hash, new_hash=digest, key=key)


async def _insert_batch(
    session: AsyncSession,
    *,
    data: BatchCreate,
    key: str | None,
    digest: str,
    request_id: str | None,
) -> Batch | None:
    stmt = (
        pg_insert(Batch)
        .values(
            name=data.name,
            metadata_=data.metadata,
            idempotency_key=key,
            request_hash=digest,
            request_id=request_id,
        )
        .on_conflict_do_nothing(
            index_elements=["idempotency_key"],
            index_where=col(Batch.idempotency_key).is_not(None),
        )
        .returning(Batch)
    )
    batch: Batch | None = (await session.execute(stmt)).scalar_one_or_none()
    return batch


async def _insert_audits(
    session: AsyncSession, *, batch_id: UUID, items: Sequence[AuditCreate], request_id: str | None
) -> None:
    """All audits in one multi-row INSERT, not a round trip each."""
    rubric_cache: audits.RubricCache = {}
    rows = [
        audits.new_row(
            item,
            criteria=await _item_criteria(session, item, index=index, cache=rubric_cache),
            batch_id=batch_id,
            batch_index=index,
            request_id=request_id,
        )
        for index, item in enumerate(items)
    ]
    # The rows as parameters, not `values(rows)`: SQLAlchemy then renders the multi-row
    # INSERT from a template compiled once ("insertmanyvalues", which RETURNING turns on
    # for asyncpg) instead of compiling 17,000 bind parameters anew for every batch.
    table = metadata.tables["audit"]
    await session.execute(sa.insert(table).returning(table.c.id), rows)
    for row in rows:
        defer_run(session, row["id"])


async def _item_criteria(
    session: AsyncSession, item: AuditCreate, *, index: int, cache: audits.RubricCache
) -> audits.ResolvedCriteria:
    """An item's criteria; an unknown rubric is reported at the item that names it."""
    try:
        return await audits.resolve_criteria(session, data=item, cache=cache)
    except UnknownRubric as error:
        loc = ["body", "audits", index, "rubric"]
        raise UnknownRubric(
            f"audits[{index}]: {error.detail}",
            rubric=item.rubric,
            errors=[{"loc": loc, "msg": error.detail, "type": UnknownRubric.code}],
        ) from error


async def get(session: AsyncSession, *, batch_id: UUID) -> Batch | None:
    batch: Batch | None = await session.get(Batch, batch_id)
    return batch


async def get_or_raise(session: AsyncSession, *, batch_id: UUID) -> Batch:
    batch = await get(session, batch_id=batch_id)
    if batch is None:
        raise BatchNotFound(f"No batch has id {batch_id}.")
    return batch


async def summarize(session: AsyncSession, batch: Batch) -> BatchSummary:
    return (await _summaries(session, [batch]))[0]


async def _summaries(session: AsyncSession, batches: Sequence[Batch]) -> list[BatchSummary]:
    """Counts, tokens and last finish of several batches, in one grouped query."""
    stmt = (
        sa.select(
            col(Audit.batch_id),
            col(Audit.status),
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(col(Audit.prompt_tokens)), 0),
            sa.func.coalesce(sa.func.sum(col(Audit.completion_tokens)), 0),
            sa.func.max(col(Audit.finished_at)),
        )
        .where(col(Audit.batch_id).in_([b.id for b in batches]))
        .group_by(col(Audit.batch_id), col(Audit.status))
    )
    grouped: dict[UUID | None, list[Any]] = {b.id: [] for b in batches}
    for row in (await session.execute(stmt)).all():
        grouped[row[0]].append(row)
    return [_summary(batch, grouped[batch.id]) for batch in batches]


def _summary(batch: Batch, rows: list[Any]) -> BatchSummary:
    counts = {status: count for _, status, count, *_ in rows}
    finished = [row[5] for row in rows if row[5] is not None]
    return BatchSummary(
        batch=batch,
        counts=BatchCounts(**counts, total=sum(counts.values())),
        prompt_tokens=sum(row[3] for row in rows),
        completion_tokens=sum(row[4] for row in rows),
        last_finished_at=max(finished, default=None),
    )


async def list_page(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[BatchSummary], str | None]:
    """Batches, newest first, with their counts."""
    stmt = keyset_page(
        sa.select(Batch),
        created_at=col(Batch.created_at),
        row_id=col(Batch.id),
        limit=limit,
        cursor=cursor,
    )
    rows, next_cursor = split_page(
        list((await session.execute(stmt)).scalars()),
        limit=limit,
        cursor_of=lambda b: encode_cursor(b.created_at, b.id),
    )
    return (await _summaries(session, rows) if rows else []), next_cursor


async def cancel(session: AsyncSession, *, batch: Batch) -> BatchSummary:
    """Cancel every audit of the batch that has not ended; running jobs are aborted.

    A batch whose audits had all ended is left as it was: it completed, nothing was cancelled.
    """
    stmt = (
        sa.update(Audit)
        .where(col(Audit.batch_id) == batch.id, col(Audit.status).in_(UNFINISHED))
        .values(
            status="cancelled",
            finished_at=sa.func.now(),
            lease_until=None,
            updated_at=sa.func.now(),
        )
        .returning(col(Audit.id))
    )
    cancelled = list((await session.execute(stmt)).scalars())
    for audit_id in cancelled:
        defer_abort(session, audit_id)
    if cancelled:
        batch = await _stamp_cancelled(session, batch)
    return await summarize(session, batch)


async def _stamp_cancelled(session: AsyncSession, batch: Batch) -> Batch:
    stmt = (
        sa.update(Batch)
        .where(col(Batch.id) == batch.id)
        .values(cancelled_at=sa.func.coalesce(col(Batch.cancelled_at), sa.func.now()))
        .returning(Batch)
        .execution_options(populate_existing=True)
    )
    stamped: Batch = (await session.execute(stmt)).scalar_one()
    return stamped


RESULT_COLUMNS = (
    Audit.id,
    Audit.subject,
    Audit.metadata_,
    Audit.status,
    Audit.result,
    Audit.error_code,
    Audit.error_message,
    Audit.prompt_tokens,
    Audit.completion_tokens,
    Audit.batch_index,
)


async def iter_results(
    factory: SessionFactory, *, batch_id: UUID, chunk: int = 500
) -> AsyncIterator[list[Any]]:
    """The batch's audits in the order they were submitted, in chunks.

    Each chunk is a short query of its own: a streamed response outlives the
    request's transaction, and a server-side cursor would hold a connection for
    as long as the client takes to read; keyset chunks keep memory flat too.
    """
    after = -1
    while True:
        stmt = (
            sa.select(*[col(c) for c in RESULT_COLUMNS])
            .where(col(Audit.batch_id) == batch_id, col(Audit.batch_index) > after)
            .order_by(col(Audit.batch_index))
            .limit(chunk)
        )
        async with factory() as session:
            rows = list((await session.execute(stmt)).all())
        if not rows:
            return
        yield rows
        after = rows[-1].batch_index
