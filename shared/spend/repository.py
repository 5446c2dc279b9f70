"""Every statement on `tenant_spend`: what each tenant spent, by calendar month (UTC).

The spend is a counter kept as replies are billed, never a sum over audits: it is read
on every counted submission and every claim of a tenant with a budget. A worker's
finish adds its charge in the statement that writes the finish (`charge_month`, a part
of that statement: shared/audits/repository.py), so the counter and the audits cannot
disagree. The charge goes to one of `SHARDS` rows of the month, chosen at random: the
finishes of one tenant, as many at once as the workers have slots, would otherwise
queue on a single row's lock, each holding it until its commit is on disk. A read adds
up those few rows.

A month is the calendar month of the finish that billed the reply, by PostgreSQL's
clock, in UTC. Rows of months gone by are kept (they are a few per tenant a month).
"""

import random
from decimal import Decimal

from shared.db import Statements

SHARDS = 8
THIS_MONTH = "date_trunc('month', now() AT TIME ZONE 'UTC')::date"

_SPENT = (
    "SELECT coalesce(sum(cost_usd), 0) FROM tenant_spend "
    f"WHERE tenant = $1 AND month = {THIS_MONTH}"
)


def any_shard() -> int:
    """The row of the month a charge goes to."""
    return random.randrange(SHARDS)


def charge_month(*, rows: str, cost: str, shard: str) -> str:
    """An INSERT adding `cost` (SQL: a parameter) to this month's spend of the tenant of
    each row of `rows` (a CTE with a `tenant` column), in the row `shard`; nothing when
    `cost` is NULL (the model has no price)."""
    return (
        "INSERT INTO tenant_spend (tenant, month, shard, cost_usd) "
        f"SELECT {rows}.tenant, {THIS_MONTH}, {shard}, {cost} FROM {rows} "
        f"WHERE {cost} IS NOT NULL "
        "ON CONFLICT (tenant, month, shard) "
        "DO UPDATE SET cost_usd = tenant_spend.cost_usd + excluded.cost_usd"
    )


def over_budget(tenant: str) -> str:
    """A condition: the tenant `tenant` (SQL) has a monthly budget and has spent it."""
    spent = (
        "(SELECT coalesce(sum(spend.cost_usd), 0) FROM tenant_spend AS spend "
        f"WHERE spend.tenant = {tenant} AND spend.month = {THIS_MONTH})"
    )
    # The sum is read only for a tenant with a budget: AND stops at the first false.
    return (
        f"EXISTS (SELECT 1 FROM tenant AS budgeted WHERE budgeted.name = {tenant} "
        f"AND budgeted.monthly_budget_usd IS NOT NULL AND budgeted.monthly_budget_usd <= {spent})"
    )


async def over_budget_of(conn: Statements, *, tenants: list[str]) -> set[str]:
    """Those of these tenants that have spent their monthly budget."""
    query = f"SELECT name FROM tenant WHERE name = ANY($1::text[]) AND {over_budget('tenant.name')}"
    return {record["name"] for record in await conn.fetch(query, tenants)}


_SPENT_BY_TENANT = (
    f"SELECT tenant, sum(cost_usd) AS spent FROM tenant_spend WHERE month = {THIS_MONTH} "
    "GROUP BY tenant"
)


async def spent_this_month_by_tenant(conn: Statements) -> dict[str, Decimal]:
    """USD each tenant spent this month (a tenant that spent nothing is left out)."""
    return {record["tenant"]: record["spent"] for record in await conn.fetch(_SPENT_BY_TENANT)}


_BUDGET_AND_SPEND = (
    f"SELECT monthly_budget_usd AS budget, ({_SPENT}) AS spent FROM tenant WHERE name = $1"
)


async def budget_and_spend(conn: Statements, *, tenant: str) -> tuple[Decimal | None, Decimal]:
    """The tenant's monthly budget (None: none) and what it spent this month."""
    record = await conn.fetchrow(_BUDGET_AND_SPEND, tenant)
    if record is None:
        return None, await spent_this_month(conn, tenant=tenant)
    return record["budget"], record["spent"]


async def spent_this_month(conn: Statements, *, tenant: str) -> Decimal:
    """USD the tenant's billed replies cost this month."""
    spent: Decimal = await conn.fetchval(_SPENT, tenant)
    return spent
