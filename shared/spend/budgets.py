"""Budgets that stop spending: per batch (`max_cost_usd`) and per tenant and month.

**Per batch.** A batch with `max_cost_usd` keeps its spend (`batch.spent_usd`), added
to by every finish of its audits. Once the spend reaches the budget, no audit of the
batch is claimed (the claim's condition, shared/audits/repository.py), so none calls
the model again; the first attempt turned away cancels every audit of the batch still
queued, with `error.code = "budget_exhausted"`, in one statement (`stop_batch`), and
stamps the batch `budget_exhausted_at` (and `cancelled_at`, so that it ends
`cancelled`). Audits already running finish, and are charged: the overshoot is at most
what was in flight when the budget was reached, the calls of at most as many audits as
the workers have slots (each its `samples` calls, and a corrective call per invalid
reply). An attempt
of a running audit that fails transiently after that is not run again: it is cancelled
like the others. A budget counts priced replies only, so `POST /batches` refuses one
whose audits run a model without a price.

**Per tenant.** `auditq tenant set NAME --monthly-budget-usd X` gives a tenant a budget
per calendar month, in UTC: it resets at 00:00 UTC on the first of each month. The
spend is a counter per tenant and month (shared/spend/repository.py). Once it reaches
the budget, the tenant's new submissions are refused (429 `budget_exhausted`, naming the
budget and when it resets, with `Retry-After`), and its queued audits wait: a claim
turns them away (`OnHold`), the worker puts the tenant on hold in the fair queue, where
its jobs stay without being picked (shared/fair_queue.py), and the reconciler takes it
off hold as soon as its budget allows again, raised or reset (worker/budget_holds.py).
Running audits finish, as for a batch.
"""

import math
from datetime import UTC, datetime
from decimal import Decimal
from uuid import UUID

from shared.audits import repository as audits
from shared.batches import repository as batches
from shared.db import Statements
from shared.errors import AppError, InvalidRequest
from shared.spend import repository as spend
from shared.spend.amounts import shown
from shared.spend.prices import PriceTable
from shared.webhooks import outbox

BUDGET_EXHAUSTED = "budget_exhausted"
BATCH_BUDGET_SPENT = "its batch spent its budget (max_cost_usd)"
_BATCH_STOPPED = "not run: its batch spent its budget (max_cost_usd) before it started"


class BudgetExhausted(AppError):
    """The tenant spent its monthly budget: submit again once it resets or is raised."""

    status = 429
    code = BUDGET_EXHAUSTED
    title = "Budget exhausted"


class ModelPriceUnknown(InvalidRequest):
    """A batch with a budget runs a model that has no price: name it in MODEL_PRICES."""

    code = "model_price_unknown"
    title = "Model without a price"


def check_priced(models: list[str], prices: PriceTable) -> None:
    """Raise `ModelPriceUnknown` naming the audits of a budgeted batch whose model has no
    price: their spend could not be counted, and the budget would never be reached."""
    unpriced = [(index, model) for index, model in enumerate(models) if not prices.knows(model)]
    if not unpriced:
        return
    names = sorted({model for _, model in unpriced})
    raise ModelPriceUnknown(
        f"max_cost_usd needs a price for every model the batch runs; none is known for "
        f"{', '.join(repr(name) for name in names)}: add it to MODEL_PRICES.",
        errors=[
            {
                "loc": ["body", "audits", index, "model"],
                "msg": f"no price is known for model {model!r}",
                "type": ModelPriceUnknown.code,
            }
            for index, model in unpriced[:50]
        ],
    )


async def stop_batch(conn: Statements, *, batch_id: UUID) -> list[UUID]:
    """Cancel the queued audits of a batch that spent its budget, and say so on the batch;
    the cancelled audits' ids. In a transaction: the audits' webhook events, and the
    batch's if that ended it, are written with it (shared/webhooks/outbox.py)."""
    cancelled = await audits.cancel_queued_of_batch(
        conn, batch_id, code=BUDGET_EXHAUSTED, message=_BATCH_STOPPED
    )
    await batches.stamp_budget_exhausted(conn, batch_id, cancelled=bool(cancelled))
    if cancelled:
        await outbox.batches_may_have_ended(conn, [batch_id])
    return cancelled


def month_resets_at(now: datetime) -> datetime:
    """When the month of `now` ends, and a monthly budget starts again: the first of the
    next month, 00:00 UTC."""
    now = now.astimezone(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return datetime(year, month, 1, tzinfo=UTC)


async def check_tenant(conn: Statements, *, tenant: str, monthly_budget: Decimal | None) -> None:
    """Raise `BudgetExhausted` when the tenant has spent its budget (as the API's directory
    knows it) this month."""
    if monthly_budget is None:
        return
    _raise_if_spent(tenant, monthly_budget, await spend.spent_this_month(conn, tenant=tenant))


async def check_tenant_now(conn: Statements, *, tenant: str) -> None:
    """`check_tenant` with the budget read from PostgreSQL, with the spend, in one statement:
    for a submission that does not go through the API's directory (a rerun of another
    tenant's audit by an admin)."""
    budget, spent = await spend.budget_and_spend(conn, tenant=tenant)
    if budget is not None:
        _raise_if_spent(tenant, budget, spent)


def _raise_if_spent(tenant: str, monthly_budget: Decimal, spent: Decimal) -> None:
    if spent < monthly_budget:
        return
    now = datetime.now(UTC)
    resets_at = month_resets_at(now)
    raise BudgetExhausted(
        f"Tenant {tenant!r} has spent its monthly budget of {shown(monthly_budget)} "
        f"(monthly_budget_usd): {shown(spent)} this month. It resets at "
        f"{resets_at:%Y-%m-%dT%H:%M:%SZ}, the first of next month (UTC); until then its "
        "queued audits wait and new submissions are refused.",
        headers={"Retry-After": str(max(1, math.ceil((resets_at - now).total_seconds())))},
        limit="monthly_budget_usd",
        monthly_budget_usd=float(monthly_budget),
        spent_usd=float(spent),
        resets_at=resets_at.isoformat().replace("+00:00", "Z"),
    )
