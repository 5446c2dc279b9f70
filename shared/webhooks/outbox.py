"""The transactional outbox: an event is a row written in the transaction that ends its
audit or batch, so that nothing can end without its event, or send one for an end that
was rolled back. Deliverers send it later, from the table (shared/webhooks/delivery.py).

- An audit's event is written by the statement that ends it (shared/audits/repository.py,
  `_ending`), when it has a `callback_url`: its own, or its batch's when the batch asked
  for `item_events`.
- A batch with a `callback_url` sends `batch.completed` (or `batch.cancelled`, when it
  was cancelled) when its last audit ends: every writer of an audit's end calls
  `batches_may_have_ended` in the same transaction (the worker's finish, a cancel, a
  batch's cancel, the reconciler). Each locks the batch's row after its audit's write,
  then looks for audits still unfinished with a new snapshot: of two audits ending at
  once, the one that locks second sees the other's end, so exactly one of them writes
  the event. A retried audit opens the batch again, and its end sends the event again.
"""

from collections.abc import Iterable
from uuid import UUID, uuid4

from shared.audits import repository as audits
from shared.batches import repository as batches
from shared.batches.summary import summarize
from shared.batches.views import to_read
from shared.db import Statements
from shared.webhooks import repository as events
from shared.webhooks.repository import NewEvent
from shared.webhooks.schemas import EventPayload
from shared.webhooks.vocabulary import EventType


async def batches_may_have_ended(conn: Statements, batch_ids: Iterable[UUID | None]) -> None:
    """Write the event of each of these batches that the caller's audit ends just ended."""
    # In one order for every writer: two of them never wait for each other's batches.
    for batch_id in sorted({batch_id for batch_id in batch_ids if batch_id is not None}):
        await _batch_may_have_ended(conn, batch_id)


async def _batch_may_have_ended(conn: Statements, batch_id: UUID) -> None:
    batch = await batches.lock_if_notifying(conn, batch_id)
    if batch is None or await audits.batch_has_unfinished(conn, batch_id):
        return
    assert batch.callback_url is not None  # `lock_if_notifying` returns no other
    summary = await summarize(conn, batch)
    kind = EventType.BATCH_CANCELLED if summary.status == "cancelled" else EventType.BATCH_COMPLETED
    # PostgreSQL's clock, as for audits' events: the deliverer reads due events by it.
    now = await audits.clock(conn)
    payload = EventPayload(type=kind, timestamp=now, data=to_read(summary))
    event = NewEvent(
        id=uuid4(),
        tenant=batch.tenant,
        type=kind,
        audit_id=None,
        batch_id=batch_id,
        url=batch.callback_url,
        payload=payload.model_dump_json(),
        created_at=now,
    )
    await events.insert_many(conn, [event])
