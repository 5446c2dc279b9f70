"""Audit rows in any state, written straight to PostgreSQL as a worker or time would leave them.

The API only ever creates queued audits; repository and reconciler tests need running ones
with live or expired leases, exhausted ones and finished ones; budget tests need batches
and tenants that spent what they did.
"""

from datetime import timedelta
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.audits.models import Audit
from shared.batches.models import Batch
from shared.db import SessionFactory, SessionStatements, session_scope
from shared.rubrics.models import Rubric
from shared.spend.repository import THIS_MONTH
from shared.spend.repository import spent_this_month as spent
from shared.tenants.caller import DEFAULT_TENANT
from shared.tenants.repository import update_tenant

CONTENT = "Our toothbrush is 100% biodegradable and carbon neutral."
CRITERIA = [
    {"id": "claims_substantiated", "description": "Claims are backed by sources.", "weight": 1.0},
    {"id": "no_vague_terms", "description": "No vague green terms.", "weight": 2.0},
]


def audit_values(**overrides: Any) -> dict[str, Any]:
    """The columns of a queued audit with two criteria; `overrides` replace any of them."""
    return {
        "id": uuid4(),
        "tenant": DEFAULT_TENANT,
        "status": "queued",
        "subject": "Product page: bamboo toothbrush",
        "content": CONTENT,
        "criteria": CRITERIA,
        "model": "gpt-4o-mini",
        "metadata_": {},
        "attempts": 0,
        "attempt_limit": 5,
        **overrides,
    }


def ago(seconds: float) -> Any:
    """A timestamp `seconds` before the database's `now()` (in the future when negative)."""
    return sa.func.now() - timedelta(seconds=seconds)


async def ensure_rubrics(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Rows naming a rubric reference it, as the API writes them: the rubric exists, the
    row's own criteria are NULL."""
    for row in rows:
        if row.get("rubric_name") is None:
            continue
        row["criteria"] = sa.null()  # SQL NULL, not JSON null
        rubric = {
            "tenant": row["tenant"],
            "name": row["rubric_name"],
            "version": row.get("rubric_version") or 1,
            "description": "",
            "criteria": CRITERIA,
        }
        await session.execute(pg_insert(Rubric).values(rubric).on_conflict_do_nothing())


async def insert_audit(factory: SessionFactory, **overrides: Any) -> UUID:
    values = audit_values(**overrides)
    async with session_scope(factory) as session:
        await ensure_rubrics(session, [values])
        await session.execute(sa.insert(Audit).values(values))
    audit_id: UUID = values["id"]
    return audit_id


async def running_audit(
    factory: SessionFactory, *, attempts: int = 1, lease_s: float = 60, **overrides: Any
) -> UUID:
    """An audit in its `attempts`-th attempt whose lease ends in `lease_s` (past when < 0)."""
    return await insert_audit(
        factory,
        status="running",
        attempts=attempts,
        lease_until=ago(-lease_s),
        started_at=ago(5),
        **overrides,
    )


async def load_audit(factory: SessionFactory, audit_id: UUID | str) -> Audit:
    async with factory() as session:
        audit = await session.get(Audit, UUID(str(audit_id)))
    assert audit is not None, f"no audit {audit_id}"
    return audit


async def update_audit(factory: SessionFactory, audit_id: UUID | str, **values: Any) -> None:
    async with session_scope(factory) as session:
        stmt = sa.update(Audit).where(col(Audit.id) == UUID(str(audit_id))).values(**values)
        await session.execute(stmt)


async def expire_lease(factory: SessionFactory, audit_id: UUID | str) -> None:
    """Make a running audit look abandoned: its lease ended a second ago."""
    await update_audit(factory, audit_id, lease_until=ago(1))


async def insert_batch(
    factory: SessionFactory, *, max_cost_usd: Decimal | None = None, **overrides: Any
) -> UUID:
    """A batch (its audits are `insert_audit(..., batch_id=)`), with a budget if given,
    nothing spent yet unless `spent_usd` says otherwise."""
    values = {
        "id": uuid4(),
        "tenant": DEFAULT_TENANT,
        "metadata_": {},
        "max_cost_usd": max_cost_usd,
        "spent_usd": None if max_cost_usd is None else Decimal(0),
        **overrides,
    }
    async with session_scope(factory) as session:
        await session.execute(sa.insert(Batch).values(values))
    batch_id: UUID = values["id"]
    return batch_id


async def load_batch(factory: SessionFactory, batch_id: UUID | str) -> Batch:
    async with factory() as session:
        batch = await session.get(Batch, UUID(str(batch_id)))
    assert batch is not None, f"no batch {batch_id}"
    return batch


async def set_monthly_budget(factory: SessionFactory, tenant: str, usd: Decimal | None) -> None:
    """What `auditq tenant set TENANT --monthly-budget-usd` writes."""
    async with session_scope(factory) as session:
        await update_tenant(SessionStatements(session), tenant, {"monthly_budget_usd": usd})


async def spend_this_month(factory: SessionFactory, tenant: str, usd: Decimal) -> None:
    """Count `usd` more in the tenant's spend of this month, as a finish would."""
    async with session_scope(factory) as session:
        await session.execute(
            sa.text(
                "INSERT INTO tenant_spend (tenant, month, shard, cost_usd) "
                f"VALUES (:tenant, {THIS_MONTH}, 0, :usd) ON CONFLICT (tenant, month, shard) "
                "DO UPDATE SET cost_usd = tenant_spend.cost_usd + excluded.cost_usd"
            ),
            {"tenant": tenant, "usd": usd},
        )


async def spent_this_month(factory: SessionFactory, tenant: str) -> Decimal:
    async with factory() as session:
        return await spent(SessionStatements(session), tenant=tenant)
