"""Batches of audits: one transaction in, one NDJSON stream out.

Functions take a `Statements` first and never commit. Creating and cancelling a
batch are units of work (a session's transaction, `SessionStatements`); reading one
is a statement or two. A batch's counts, status and finish time are derived from
its audits on every read, so they cannot drift.
"""

from collections.abc import Sequence
from decimal import Decimal
from uuid import UUID, uuid4

from shared.audits import limits
from shared.audits import repository as audits
from shared.audits import service as audit_service
from shared.audits.repository import ResultLine
from shared.audits.schemas import AuditFields
from shared.audits.status import AuditStatus
from shared.batches import repository as batches
from shared.batches.exceptions import BatchBudgetSpent, BatchHasNoAudits, BatchNotFound
from shared.batches.repository import BatchRow
from shared.batches.schemas import BatchCreate
from shared.batches.summary import BatchSummary, summaries, summarize
from shared.config import Settings
from shared.db import Statements
from shared.idempotency import Created, replay, request_hash, rerun_hash, winner
from shared.pagination import Cursors, listing, split_page
from shared.queue import defer_abort, defer_run
from shared.rubrics.exceptions import UnknownRubric
from shared.spend import budgets
from shared.spend.prices import PriceTable
from shared.tenants import quotas
from shared.webhooks import outbox


async def create(
    conn: Statements,
    *,
    data: BatchCreate,
    tenant: str,
    settings: Settings,
    prices: PriceTable | None = None,
    max_queued: int | None = None,
    monthly_budget: Decimal | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    trace_context: str | None = None,
) -> Created[BatchSummary]:
    """Record the batch of `tenant` and all its audits in one statement each; jobs go after
    commit. With a quota (`max_queued`) the batch fits whole or is refused whole; a tenant
    that has spent its `monthly_budget` is refused. A batch with a budget
    (`max_cost_usd`) must run models that have a price in `prices` (needed then only).

    Every audit stores the request's `trace_context`: a batch is one trace
    (shared/tracing.py)."""
    limits.check_all(data.audits, settings)
    if data.max_cost_usd is not None:
        assert prices is not None, "a batch with a budget is checked against the prices"
        budgets.check_priced([audit_service.model_of(a, settings) for a in data.audits], prices)
    digest = request_hash(data)
    if max_queued is not None:
        await quotas.lock(conn, tenant=tenant)
    if earlier := await _replay(conn, tenant, idempotency_key, digest):
        return earlier
    if max_queued is not None:
        adding = len(data.audits)
        await quotas.check_room(conn, tenant=tenant, max_queued=max_queued, adding=adding)
    await budgets.check_tenant(conn, tenant=tenant, monthly_budget=monthly_budget)
    batch = await batches.insert(
        conn,
        batch_id=uuid4(),
        tenant=tenant,
        name=data.name,
        metadata=data.metadata,
        idempotency_key=idempotency_key,
        request_hash=digest,
        request_id=request_id,
        callback_url=data.callback_url,
        item_events=data.item_events,
        max_cost_usd=data.max_cost_usd,
    )
    if batch is None:  # a concurrent request with the same key won the insert
        return winner(await _replay(conn, tenant, idempotency_key, digest))
    await _insert_audits(
        conn, batch=batch, data=data, settings=settings, trace_context=trace_context
    )
    return Created(await summarize(conn, batch))


async def _replay(
    conn: Statements, tenant: str, key: str | None, digest: str
) -> Created[BatchSummary] | None:
    """The batch an earlier request of the tenant with this key created, if any (same
    body or 422); None without a key."""
    if key is None:
        return None
    earlier = await batches.get_by_idempotency_key(conn, tenant=tenant, key=key)
    if earlier is None:
        return None
    summary = await summarize(conn, earlier)
    return replay(summary, stored_hash=earlier.request_hash, new_hash=digest, key=key)


async def _insert_audits(
    conn: Statements,
    *,
    batch: BatchRow,
    data: BatchCreate,
    settings: Settings,
    trace_context: str | None,
) -> None:
    """All audits in one INSERT, not a round trip each."""
    items = data.audits
    cache: audit_service.RubricCache = {}
    resolved = [
        await _item_criteria(conn, item, batch=batch, index=index, cache=cache)
        for index, item in enumerate(items)
    ]
    limits.check_prompts(
        [
            problem
            for index, (item, criteria) in enumerate(zip(items, resolved, strict=True))
            for problem in audit_service.prompt_problems(
                item, criteria, settings, loc=("body", "audits", index)
            )
        ]
    )
    new = [
        audit_service.new_audit(
            item,
            tenant=batch.tenant,
            settings=settings,
            criteria=criteria,
            batch_id=batch.id,
            batch_index=index,
            priority=data.priority,
            request_id=batch.request_id,
            trace_context=trace_context,
            callback_url=batch.callback_url if batch.item_events else None,
        )
        for index, (item, criteria) in enumerate(zip(items, resolved, strict=True))
    ]
    await audits.insert_many(conn, new)
    for audit in new:
        defer_run(conn, audit.run)


async def _item_criteria(
    conn: Statements,
    item: AuditFields,
    *,
    batch: BatchRow,
    index: int,
    cache: audit_service.RubricCache,
) -> audit_service.ResolvedCriteria:
    """An item's criteria; an unknown rubric is reported at the item that names it."""
    try:
        return await audit_service.resolve_criteria(
            conn, tenant=batch.tenant, data=item, cache=cache
        )
    except UnknownRubric as error:
        loc = ["body", "audits", index, "rubric"]
        raise UnknownRubric(
            f"audits[{index}]: {error.detail}",
            rubric=item.rubric,
            errors=[{"loc": loc, "msg": error.detail, "type": UnknownRubric.code}],
        ) from error


async def get_or_raise(conn: Statements, *, batch_id: UUID, tenant: str | None) -> BatchRow:
    """The batch, if `tenant` owns it (None: any tenant); another tenant's is not found."""
    batch = await batches.get(conn, batch_id, tenant=tenant)
    if batch is None:
        raise BatchNotFound(f"No batch has id {batch_id}.")
    return batch


async def in_progress(conn: Statements, *, limit: int) -> list[BatchSummary]:
    """Up to `limit` batches with audits still queued or running, running longest first."""
    rows = await batches.get_many(conn, await audits.unfinished_batch_ids(conn, limit=limit))
    return await summaries(conn, rows) if rows else []


async def list_page(
    conn: Statements, *, tenant: str | None, limit: int, cursor: str | None, cursor_key: bytes
) -> tuple[list[BatchSummary], str | None]:
    """Batches of `tenant` (None: every tenant), newest first, with their counts."""
    cursors = Cursors(cursor_key, listing("batches", {"tenant": tenant}))
    after = None if cursor is None else cursors.read_keyset(cursor)
    rows, next_cursor = split_page(
        await batches.page(conn, tenant=tenant, limit=limit + 1, after=after),
        limit=limit,
        cursor_of=lambda b: cursors.keyset(b.created_at, b.id),
    )
    return (await summaries(conn, rows) if rows else []), next_cursor


async def cancel(conn: Statements, *, batch: BatchRow) -> BatchSummary:
    """Cancel every audit of the batch that has not ended; running jobs are aborted.

    A batch whose audits had all ended is left as it was: it completed, nothing was cancelled.
    """
    cancelled = await audits.cancel_batch(conn, batch.id)
    for audit_id in cancelled:
        defer_abort(conn, audit_id)
    if cancelled:
        batch = await batches.stamp_cancelled(conn, batch.id)
        await outbox.batches_may_have_ended(conn, [batch.id])
    return await summarize(conn, batch)


async def retry(
    conn: Statements,
    *,
    batch: BatchRow,
    statuses: Sequence[AuditStatus],
    settings: Settings,
    quota: quotas.QuotaOf,
) -> tuple[BatchSummary, dict[str, int]]:
    """Queue the batch's audits in `statuses` (failed, cancelled) again; how many of each.

    One UPDATE per status, so that each count is exact, in the caller's transaction.
    Queuing cancelled audits again takes the batch's cancellation back. Where the
    batch's tenant has a quota, a retry that would take it past is refused whole, as is
    a retry of a batch that spent its budget (`BatchBudgetSpent`).
    """
    _check_budget_left(batch)
    max_queued = await quota(batch.tenant)
    if max_queued is not None:
        await quotas.lock(conn, tenant=batch.tenant)
    requeued: dict[str, int] = {}
    for status in statuses:
        runs = await audits.requeue_batch_for_retry(
            conn, batch.id, status=status, attempts=settings.max_attempts
        )
        for run in runs:
            defer_run(conn, run)
        requeued[status] = len(runs)
    total = sum(count for count in requeued.values())
    if max_queued is not None and total:
        await quotas.check_requeued(
            conn, tenant=batch.tenant, max_queued=max_queued, requeued=total
        )
    if requeued.get(AuditStatus.CANCELLED):
        batch = await batches.unstamp_cancelled(conn, batch.id)
    return await summarize(conn, batch), requeued


def _check_budget_left(batch: BatchRow) -> None:
    spent, budget = batch.spent_usd, batch.max_cost_usd
    if budget is not None and spent is not None and spent >= budget:
        raise BatchBudgetSpent(
            f"Batch {batch.id} spent its max_cost_usd of {budget.normalize():f} USD "
            f"({spent.normalize():f} USD): its audits queued again would be cancelled "
            "before calling the model. Re-run them as a new batch with the same budget: "
            f"POST /api/v1/batches/{batch.id}/rerun."
        )


async def rerun(
    conn: Statements,
    *,
    batch: BatchRow,
    settings: Settings,
    quota: quotas.QuotaOf,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    trace_context: str | None = None,
) -> Created[BatchSummary]:
    """A new batch re-running every audit of `batch` with the same inputs, whatever became
    of them; in one transaction, all or nothing, against the batch's tenant's quota.

    The copies keep each audit's index and priority and link back through `rerun_of`, as
    the new batch does to `batch`, which keeps its budget (`max_cost_usd`, nothing spent
    yet); a tenant that spent its monthly budget is refused. They are checked against
    `ALLOWED_MODELS`, `MAX_SAMPLES` and `MAX_CONTENT_CHARS` as they stand now (`loc`:
    `["audits", index, field]`).
    """
    digest = rerun_hash(batch.id)
    max_queued = await quota(batch.tenant)
    if max_queued is not None:
        await quotas.lock(conn, tenant=batch.tenant)
    if earlier := await _replay(conn, batch.tenant, idempotency_key, digest):
        return earlier
    await budgets.check_tenant_now(conn, tenant=batch.tenant)
    items = await audits.rerun_items(conn, batch.id)
    if not items:
        raise BatchHasNoAudits(f"Batch {batch.id} has no audits left to re-run.")
    limits.check_rerun(items, settings)
    if max_queued is not None:
        await quotas.check_room(conn, tenant=batch.tenant, max_queued=max_queued, adding=len(items))
    copy = await batches.insert(
        conn,
        batch_id=uuid4(),
        tenant=batch.tenant,
        name=batch.name,
        metadata=batch.metadata,
        idempotency_key=idempotency_key,
        request_hash=digest,
        request_id=request_id,
        rerun_of=batch.id,
        max_cost_usd=batch.max_cost_usd,
    )
    if copy is None:  # a concurrent rerun with the same key won the insert
        return winner(await _replay(conn, batch.tenant, idempotency_key, digest))
    runs = await audits.copy_batch(
        conn,
        source_id=batch.id,
        batch_id=copy.id,
        attempt_limit=settings.max_attempts,
        request_id=request_id,
        trace_context=trace_context,
    )
    for run in runs:
        defer_run(conn, run)
    return Created(await summarize(conn, copy))


async def results_after(
    conn: Statements, *, batch_id: UUID, after: UUID | None, limit: int
) -> list[ResultLine] | None:
    """The next `limit` lines of the batch's results after the audit `after` (None: not
    an audit of this batch)."""
    return await audits.batch_results(conn, batch_id=batch_id, after=after, limit=limit)
