"""Every statement on `webhook_event` and `webhook_attempt`, and the typed rows they return.

An audit's event is written by the very statement that ends the audit: the audit
repository's terminal UPDATEs carry `audit_events_cte`, which writes, for each audit they
end with a callback, its event and its row as it now stands (`snapshot`); the body is
rendered from it at the first try (shared/webhooks/payloads.py) and kept. A batch's event
is written with its body (`insert_many`), in the transaction that ends the batch.

Deliverers share the outbox through two statements:
- `claim_due` takes due events with `FOR UPDATE SKIP LOCKED` (deliverers never wait on
  each other), counts the try and leases the event by moving its `next_attempt_at` past
  the try's end: a deliverer that dies mid-try leaves it due again once the lease ends.
- `record_attempt` keeps the try and, fenced by the try's number, sets where the event
  stands: a try whose lease ran out and was claimed again changes nothing but its record.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from typing import Any, Self
from uuid import UUID

from shared.audits.status import TERMINAL, sql_list
from shared.db import Statements
from shared.webhooks.vocabulary import DeliveryStatus, EventType

P = f"'{DeliveryStatus.PENDING}'"


@dataclass(frozen=True, slots=True)
class NewEvent:
    """An event written with its body: due at once."""

    id: UUID
    tenant: str
    type: EventType
    audit_id: UUID | None
    batch_id: UUID | None
    url: str
    payload: str | None
    created_at: datetime


@dataclass(frozen=True, slots=True)
class EventRow(NewEvent):
    """One row of `webhook_event`, every column by its name (tests hold it to the table)."""

    snapshot: dict[str, Any] | None
    status: DeliveryStatus
    attempts: int
    next_attempt_at: datetime | None
    settled_at: datetime | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        values = dict(record)
        values["type"] = EventType(values["type"])
        values["status"] = DeliveryStatus(values["status"])
        return cls(**values)


@dataclass(frozen=True, slots=True)
class AttemptRow:
    """One row of `webhook_attempt`: a try and what came of it."""

    event_id: UUID
    number: int
    started_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class ClaimedEvent:
    """What a deliverer needs to send an event it claimed, and to judge the outcome."""

    id: UUID
    tenant: str
    type: EventType
    url: str
    payload: str | None  # None until its first try renders it from `snapshot`
    snapshot: dict[str, Any] | None
    attempts: int
    created_at: datetime
    # PostgreSQL's `now()` as it claimed the event: a try's times are measured from it, on
    # the clock of `created_at` and `next_attempt_at`, whatever the worker host's says.
    claimed_at: datetime

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        return cls(**{**record, "type": EventType(record["type"])})


_NEW_COLUMNS = tuple(f.name for f in fields(NewEvent))
COLUMNS = tuple(f.name for f in fields(EventRow))
ATTEMPT_COLUMNS = tuple(f.name for f in fields(AttemptRow))
_CLAIMED = ", ".join(
    "now() AS claimed_at" if f.name == "claimed_at" else f"e.{f.name}" for f in fields(ClaimedEvent)
)
_TYPES = {"id": "uuid", "audit_id": "uuid", "batch_id": "uuid", "created_at": "timestamptz"}

# One statement for any number of events: each column travels as one array. Due at once.
_INSERT_MANY = (
    f"INSERT INTO webhook_event ({', '.join(_NEW_COLUMNS)}, status, attempts, next_attempt_at) "
    f"SELECT t.*, {P}, 0, t.created_at FROM unnest("
    + ", ".join(f"${i}::{_TYPES.get(n, 'text')}[]" for i, n in enumerate(_NEW_COLUMNS, start=1))
    + f") AS t({', '.join(_NEW_COLUMNS)})"
)


def audit_events_cte(snapshot: str) -> str:
    """A CTE writing the event of each audit of the CTE `audit` (the rows an UPDATE just
    returned) that it ended with a callback; `snapshot` is the SQL of its row as JSON."""
    return (
        "audit_event AS (INSERT INTO webhook_event (id, tenant, type, audit_id, url, snapshot, "
        "status, attempts, next_attempt_at, created_at) SELECT gen_random_uuid(), audit.tenant, "
        f"'audit.' || audit.status, audit.id, audit.callback_url, {snapshot}, {P}, 0, now(), "
        f"now() FROM audit WHERE audit.callback_url IS NOT NULL "
        f"AND audit.status IN {sql_list(TERMINAL)})"
    )


_CLAIM_DUE = (
    "UPDATE webhook_event AS e SET attempts = e.attempts + 1, next_attempt_at = now() + $2 "
    f"FROM (SELECT id FROM webhook_event WHERE status = {P} AND next_attempt_at <= now() "
    "ORDER BY next_attempt_at LIMIT $1 FOR UPDATE SKIP LOCKED) AS due "
    f"WHERE e.id = due.id RETURNING {_CLAIMED}"
)
_RECORD_ATTEMPT = (
    f"WITH attempt AS (INSERT INTO webhook_attempt ({', '.join(ATTEMPT_COLUMNS)}) "
    "VALUES ($1, $2, $3, $4, $5, $6)) "
    "UPDATE webhook_event SET status = $7, next_attempt_at = $8, "
    "payload = coalesce(payload, $9), "
    f"settled_at = CASE WHEN $7 = {P} THEN NULL ELSE now() END "
    "WHERE id = $1 AND attempts = $2"
)
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM webhook_event"
_ATTEMPTS_OF = (
    f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM webhook_attempt "
    "WHERE event_id = ANY($1::uuid[]) ORDER BY event_id, number"
)


async def insert_many(conn: Statements, events: Sequence[NewEvent]) -> None:
    """Write events to the outbox, in the caller's transaction."""
    if events:
        columns = [[getattr(event, name) for event in events] for name in _NEW_COLUMNS]
        await conn.execute(_INSERT_MANY, *columns)


async def claim_due(conn: Statements, *, limit: int, lease: timedelta) -> list[ClaimedEvent]:
    """Up to `limit` due events, soonest first, each counted as tried and leased for `lease`."""
    return [ClaimedEvent.of(record) for record in await conn.fetch(_CLAIM_DUE, limit, lease)]


async def record_attempt(
    conn: Statements,
    attempt: AttemptRow,
    *,
    status: DeliveryStatus,
    next_attempt_at: datetime | None,
    payload: str | None,
) -> None:
    """Keep the try and the body it sent (the next tries send the same); the event now
    stands at `status`, unless a later try owns it."""
    values = [getattr(attempt, name) for name in ATTEMPT_COLUMNS]
    await conn.execute(_RECORD_ATTEMPT, *values, status, next_attempt_at, payload)


Keyset = tuple[datetime, UUID]


def _page_query(owner: str, *, first: bool) -> str:
    later = "" if first else " AND (created_at, id) < ($3, $4)"
    return f"{_SELECT} WHERE {owner} = $1{later} ORDER BY created_at DESC, id DESC LIMIT $2"


async def page(
    conn: Statements,
    *,
    audit_id: UUID | None = None,
    batch_id: UUID | None = None,
    limit: int,
    after: Keyset | None,
) -> list[EventRow]:
    """Up to `limit` events of the audit or of the batch, newest first, after `after`."""
    owner, owner_id = ("audit_id", audit_id) if audit_id is not None else ("batch_id", batch_id)
    query = _page_query(owner, first=after is None)
    records = await conn.fetch(query, owner_id, limit, *(after or ()))
    return [EventRow.of(record) for record in records]


async def attempts_of(conn: Statements, event_ids: Sequence[UUID]) -> list[AttemptRow]:
    """The tries of these events, in order."""
    return [AttemptRow(**record) for record in await conn.fetch(_ATTEMPTS_OF, list(event_ids))]
