"""Every statement on the `batch` table, and the typed row it returns.

A batch's counts, status, finish time and usage are not stored: they are tallied from
its audits (shared/audits/repository.py) on every read, so they cannot drift. The one
counter kept is `spent_usd`, of a batch with a budget (`max_cost_usd`): every claim of
its audits reads it (shared/spend/budgets.py), and a sum over a thousand audits per
claim would cost more than the claim. It is added to by the statement that writes a
worker's finish (`charge_budget`, a part of it), so it equals the sum of its audits'
costs. A batch without a budget keeps no counter: its finishes do not queue on its row.
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Self
from uuid import UUID

from shared.db import Statements


@dataclass(frozen=True, slots=True)
class BatchRow:
    """One row of `batch`, every column, by its column name (tests hold it to the table)."""

    id: UUID
    tenant: str
    name: str | None
    metadata: dict[str, Any]
    idempotency_key: str | None
    request_hash: str | None
    request_id: str | None
    created_at: datetime
    cancelled_at: datetime | None
    rerun_of: UUID | None
    callback_url: str | None
    item_events: bool
    max_cost_usd: Decimal | None
    spent_usd: Decimal | None
    budget_exhausted_at: datetime | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        return cls(**record)


COLUMNS = tuple(f.name for f in fields(BatchRow))
_RETURNING = f"RETURNING {', '.join(COLUMNS)}"
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM batch"

_INSERT = (
    "INSERT INTO batch (id, tenant, name, metadata, idempotency_key, request_hash, request_id, "
    "rerun_of, callback_url, item_events, max_cost_usd, spent_usd) VALUES ($1, $2, $3, $4, $5, "
    "$6, $7, $8, $9, $10, $11::numeric, CASE WHEN $11 IS NOT NULL THEN 0 END) "
    "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    f"{_RETURNING}"
)
_BY_ID = f"{_SELECT} WHERE id = $1"
_BY_ID_OF_TENANT = f"{_BY_ID} AND tenant = $2"
_BY_IDEMPOTENCY_KEY = f"{_SELECT} WHERE tenant = $1 AND idempotency_key = $2"
_BY_IDS = f"{_SELECT} WHERE id = ANY($1::uuid[])"
_STAMP_CANCELLED = (
    f"UPDATE batch SET cancelled_at = coalesce(cancelled_at, now()) WHERE id = $1 {_RETURNING}"
)
_UNSTAMP_CANCELLED = f"UPDATE batch SET cancelled_at = NULL WHERE id = $1 {_RETURNING}"
# NO KEY UPDATE: the ends of a batch's audits wait for each other, but not for the foreign
# keys of rows that name the batch (which take KEY SHARE).
_LOCK_IF_NOTIFYING = f"{_BY_ID} AND callback_url IS NOT NULL FOR NO KEY UPDATE"
# Cancelled too when audits were cancelled for it: the batch then ends `cancelled`.
_STAMP_BUDGET_EXHAUSTED = (
    "UPDATE batch SET budget_exhausted_at = coalesce(budget_exhausted_at, now()), "
    "cancelled_at = CASE WHEN $2 THEN coalesce(cancelled_at, now()) ELSE cancelled_at END "
    f"WHERE id = $1 {_RETURNING}"
)
# A batch goes once its audits have gone (retention deletes audits first).
_DELETE_EMPTY_BEFORE = (
    "WITH gone AS (DELETE FROM batch WHERE created_at < now() - $1::interval "
    "AND NOT EXISTS (SELECT 1 FROM audit WHERE audit.batch_id = batch.id) RETURNING 1) "
    "SELECT count(*) FROM gone"
)


async def insert(
    conn: Statements,
    *,
    batch_id: UUID,
    tenant: str,
    name: str | None,
    metadata: dict[str, Any],
    idempotency_key: str | None,
    request_hash: str,
    request_id: str | None,
    rerun_of: UUID | None = None,
    callback_url: str | None = None,
    item_events: bool = False,
    max_cost_usd: Decimal | None = None,
) -> BatchRow | None:
    """Insert a batch; None when its idempotency key is already taken."""
    record = await conn.fetchrow(
        _INSERT,
        batch_id,
        tenant,
        name,
        json.dumps(metadata),
        idempotency_key,
        request_hash,
        request_id,
        rerun_of,
        callback_url,
        item_events,
        max_cost_usd,
    )
    return None if record is None else BatchRow.of(record)


async def get(conn: Statements, batch_id: UUID, *, tenant: str | None) -> BatchRow | None:
    """The batch `batch_id`, if `tenant` (None: any tenant) owns it."""
    if tenant is None:
        record = await conn.fetchrow(_BY_ID, batch_id)
    else:
        record = await conn.fetchrow(_BY_ID_OF_TENANT, batch_id, tenant)
    return None if record is None else BatchRow.of(record)


async def get_many(conn: Statements, batch_ids: Sequence[UUID]) -> list[BatchRow]:
    """The batches of `batch_ids` that exist, in the order of `batch_ids`."""
    found = {row.id: row for row in map(BatchRow.of, await conn.fetch(_BY_IDS, list(batch_ids)))}
    return [found[batch_id] for batch_id in batch_ids if batch_id in found]


async def get_by_idempotency_key(conn: Statements, *, tenant: str, key: str) -> BatchRow | None:
    record = await conn.fetchrow(_BY_IDEMPOTENCY_KEY, tenant, key)
    return None if record is None else BatchRow.of(record)


async def page(
    conn: Statements, *, tenant: str | None, limit: int, after: tuple[datetime, UUID] | None
) -> list[BatchRow]:
    """Up to `limit` batches of `tenant` (None: every tenant), newest first, after `after`."""
    conditions: list[str] = []
    args: list[Any] = [limit]
    if tenant is not None:
        args.append(tenant)
        conditions.append(f"tenant = ${len(args)}")
    if after is not None:
        args.extend(after)
        conditions.append(f"(created_at, id) < (${len(args) - 1}, ${len(args)})")
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    query = f"{_SELECT}{where} ORDER BY created_at DESC, id DESC LIMIT $1"
    return [BatchRow.of(record) for record in await conn.fetch(query, *args)]


async def stamp_cancelled(conn: Statements, batch_id: UUID) -> BatchRow:
    """Note when the batch was first cancelled."""
    record = await conn.fetchrow(_STAMP_CANCELLED, batch_id)
    assert record is not None, f"batch {batch_id} vanished inside its own transaction"
    return BatchRow.of(record)


async def unstamp_cancelled(conn: Statements, batch_id: UUID) -> BatchRow:
    """Take the batch's cancellation back: its cancelled audits were queued again."""
    record = await conn.fetchrow(_UNSTAMP_CANCELLED, batch_id)
    assert record is not None, f"batch {batch_id} vanished inside its own transaction"
    return BatchRow.of(record)


async def lock_if_notifying(conn: Statements, batch_id: UUID) -> BatchRow | None:
    """The batch, locked until the transaction ends, if it has a `callback_url`; None (and
    no lock) if not: the ends of its audits then have nothing to agree on."""
    record = await conn.fetchrow(_LOCK_IF_NOTIFYING, batch_id)
    return None if record is None else BatchRow.of(record)


async def stamp_budget_exhausted(conn: Statements, batch_id: UUID, *, cancelled: bool) -> BatchRow:
    """Note when the batch's spend was first seen at its budget; `cancelled`: audits were
    cancelled for it."""
    record = await conn.fetchrow(_STAMP_BUDGET_EXHAUSTED, batch_id, cancelled)
    assert record is not None, f"batch {batch_id} vanished inside its own transaction"
    return BatchRow.of(record)


def charge_budget(*, rows: str, cost: str) -> str:
    """An UPDATE adding `cost` (SQL: a parameter) to the spend of the batch of each row of
    `rows` (a CTE with a `batch_id` column) that has a budget; nothing when `cost` is NULL."""
    return (
        f"UPDATE batch SET spent_usd = batch.spent_usd + {cost} FROM {rows} "
        f"WHERE batch.id = {rows}.batch_id AND batch.spent_usd IS NOT NULL AND {cost} IS NOT NULL"
    )


def over_budget(batch_id: str) -> str:
    """A condition: the batch `batch_id` (SQL) has a budget and has spent it."""
    return (
        f"EXISTS (SELECT 1 FROM batch AS budgeted WHERE budgeted.id = {batch_id} "
        "AND budgeted.spent_usd >= budgeted.max_cost_usd)"
    )


async def delete_empty_before(conn: Statements, *, age: timedelta) -> int:
    """Delete batches older than `age` whose audits are all gone; how many went."""
    deleted: int = await conn.fetchval(_DELETE_EMPTY_BEFORE, age)
    return deleted
