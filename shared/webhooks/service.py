"""What clients see of webhooks: the deliveries of an audit's or a batch's events.

A page lists events newest first, each with every try (at most a few dozen: the backoff
doubles up to an hour, within WEBHOOK_MAX_AGE_S), and pages on with a signed cursor as
the other lists do. The audit or batch is loaded first, scoped to the caller's tenant.
"""

from collections import defaultdict
from uuid import UUID

from shared.db import Statements
from shared.pagination import Cursors, listing, split_page
from shared.webhooks import repository as events
from shared.webhooks.repository import AttemptRow, EventRow
from shared.webhooks.schemas import Attempt, Delivery


async def deliveries(
    conn: Statements,
    *,
    audit_id: UUID | None = None,
    batch_id: UUID | None = None,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
) -> tuple[list[Delivery], str | None]:
    """A page of the events of the audit (or of the batch) and their tries, newest first."""
    cursors = Cursors(cursor_key, listing("deliveries", {"audit": audit_id, "batch": batch_id}))
    after = None if cursor is None else cursors.read_keyset(cursor)
    rows, next_cursor = split_page(
        await events.page(conn, audit_id=audit_id, batch_id=batch_id, limit=limit + 1, after=after),
        limit=limit,
        cursor_of=lambda event: cursors.keyset(event.created_at, event.id),
    )
    tries: dict[UUID, list[AttemptRow]] = defaultdict(list)
    if rows:
        for attempt in await events.attempts_of(conn, [row.id for row in rows]):
            tries[attempt.event_id].append(attempt)
    return [_delivery(row, tries[row.id]) for row in rows], next_cursor


def _delivery(event: EventRow, attempts: list[AttemptRow]) -> Delivery:
    return Delivery(
        id=event.id,
        type=event.type,
        url=event.url,
        status=event.status,
        created_at=event.created_at,
        next_attempt_at=event.next_attempt_at,
        settled_at=event.settled_at,
        attempts=[
            Attempt(
                number=a.number,
                started_at=a.started_at,
                duration_ms=a.duration_ms,
                status_code=a.status_code,
                error=a.error,
            )
            for a in attempts
        ],
    )
