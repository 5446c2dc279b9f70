"""The batches API: submit up to 1,000 audits at once, follow them, fetch the results."""

from typing import Annotated, Literal
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import StreamingResponse

from api.auth import CurrentCaller
from api.deps import (
    CurrentBatch,
    CurrentSubmitter,
    CursorKey,
    IdempotencyKey,
    PageCursor,
    PageLimit,
    RequestId,
    SettingsDep,
    TenantFilter,
    Transaction,
    check_callback,
    mark_created,
    quota_of,
    statements,
    tenant_gate,
    tenant_limits,
)
from api.openapi import RERUN_PROBLEMS, SUBMIT_PROBLEMS, problems
from api.streams import StreamSlot, TooManyStreams
from shared import tracing
from shared.audits.status import AuditStatus
from shared.batches import service as batches
from shared.batches.exceptions import (
    AuditNotInBatch,
    BatchBudgetSpent,
    BatchHasNoAudits,
    BatchNotFound,
)
from shared.batches.results import CHUNK, stream_results
from shared.batches.schemas import (
    BatchCreate,
    BatchPage,
    BatchRead,
    BatchRetried,
    RequeuedCounts,
)
from shared.batches.summary import summarize
from shared.batches.views import to_read
from shared.idempotency import IdempotencyKeyMismatch
from shared.pagination import DEFAULT_LIMIT, InvalidCursor
from shared.rubrics.exceptions import UnknownRubric
from shared.spend.budgets import ModelPriceUnknown
from shared.tenants.quotas import QuotaExceeded
from shared.webhooks import service as webhooks
from shared.webhooks.callbacks import CallbackUrlNotAllowed, WebhooksNotConfigured
from shared.webhooks.schemas import DeliveryPage

router = APIRouter(prefix="/batches", tags=["batches"])

NDJSON = "application/x-ndjson"


@router.post(
    "",
    status_code=202,
    responses=problems(
        UnknownRubric,
        IdempotencyKeyMismatch,
        CallbackUrlNotAllowed,
        WebhooksNotConfigured,
        ModelPriceUnknown,
        extra=SUBMIT_PROBLEMS,
    ),
)
async def create_batch(
    body: BatchCreate,
    submitter: CurrentSubmitter,
    transaction: Transaction,
    request_id: RequestId,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BatchRead:
    """Record 1 to 1,000 audits in one transaction, all or nothing, and queue them.

    One invalid item rejects the whole batch; the problem's `errors[].loc` names
    the item's index and field, e.g. `["body", "audits", 517, "content"]`. A batch
    that would take the tenant past its quota is refused whole (429 `quota_exceeded`).
    With a `callback_url`, the batch's end is sent there, signed, and with `item_events`
    each audit's too (the README's Webhooks section).
    With `max_cost_usd` the batch stops once its audits have spent it (see
    `budget_exhausted_at`); its audits' models must have a price (422
    `model_price_unknown` otherwise).
    """
    tenant = submitter.caller.tenant
    limits = await tenant_limits(request, submitter.caller)
    await check_callback(request, body.callback_url, submitter.caller, limits)
    # The gate opens before the commit (after the route): at most one more waits.
    async with tenant_gate(request, tenant, limits):
        created = await batches.create(
            transaction,
            data=body,
            tenant=tenant,
            settings=submitter.settings,
            prices=submitter.prices,
            max_queued=limits.max_queued,
            monthly_budget=limits.monthly_budget_usd,
            idempotency_key=idempotency_key,
            request_id=request_id,
            trace_context=tracing.current_context(),
        )
    batch_id = created.resource.batch.id
    mark_created(request, response, created, route="get_batch", batch_id=batch_id)
    return to_read(created.resource)


@router.get("/{batch_id}", responses=problems(BatchNotFound))
async def get_batch(batch: CurrentBatch, request: Request) -> BatchRead:
    """A batch with its audits counted by status."""
    async with statements(request) as conn:
        return to_read(await summarize(conn, batch))


@router.get("", responses=problems(InvalidCursor))
async def list_batches(
    request: Request,
    caller: CurrentCaller,
    cursor_key: CursorKey,
    tenant: TenantFilter = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> BatchPage:
    """Batches, newest first; follow `next_cursor` for the next page."""
    async with statements(request) as conn:
        rows, next_cursor = await batches.list_page(
            conn,
            tenant=caller.listing(tenant),
            limit=limit,
            cursor=cursor,
            cursor_key=cursor_key,
        )
    return BatchPage(items=[to_read(row) for row in rows], next_cursor=next_cursor)


@router.post("/{batch_id}/cancel", responses=problems(BatchNotFound))
async def cancel_batch(batch: CurrentBatch, transaction: Transaction) -> BatchRead:
    """Cancel every audit of the batch that is still queued or running."""
    return to_read(await batches.cancel(transaction, batch=batch))


@router.post(
    "/{batch_id}/retry",
    status_code=202,
    responses=problems(BatchNotFound, BatchBudgetSpent, QuotaExceeded),
)
async def retry_batch(
    batch: CurrentBatch,
    transaction: Transaction,
    settings: SettingsDep,
    request: Request,
    include: Annotated[
        Literal["cancelled"] | None,
        Query(description="`cancelled`: queue the cancelled audits again too."),
    ] = None,
) -> BatchRetried:
    """Queue the batch's failed audits again, in one transaction; how many, by status."""
    statuses = [AuditStatus.FAILED]
    if include == "cancelled":
        statuses.append(AuditStatus.CANCELLED)
    summary, requeued = await batches.retry(
        transaction, batch=batch, statuses=statuses, settings=settings, quota=quota_of(request)
    )
    return BatchRetried(requeued=RequeuedCounts(**requeued), batch=to_read(summary))


@router.post(
    "/{batch_id}/rerun",
    status_code=202,
    responses=problems(
        BatchNotFound, BatchHasNoAudits, IdempotencyKeyMismatch, extra=RERUN_PROBLEMS
    ),
)
async def rerun_batch(
    batch: CurrentBatch,
    caller: CurrentCaller,
    transaction: Transaction,
    settings: SettingsDep,
    request_id: RequestId,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> BatchRead:
    """A new batch re-running every audit of this one with the same inputs, in one
    transaction; poll `Location`. The batch and each audit link back through `rerun_of`.

    Counted as a submission, and against the batch's tenant's quota (refused whole, as a
    batch is); an `Idempotency-Key` makes it safe to repeat.
    """
    await tenant_limits(request, caller)
    created = await batches.rerun(
        transaction,
        batch=batch,
        settings=settings,
        quota=quota_of(request),
        idempotency_key=idempotency_key,
        request_id=request_id,
        trace_context=tracing.current_context(),
    )
    batch_id = created.resource.batch.id
    mark_created(request, response, created, route="get_batch", batch_id=batch_id)
    return to_read(created.resource)


@router.get(
    "/{batch_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "One JSON object per line and audit: `id`, `subject`, `metadata`, "
            "`status`, `result`, `error`, `usage`; oldest first. A stream cut short ends "
            "with a line without `id`: `code` `results_interrupted` and `after`, the id to "
            "resume after.",
            "content": {NDJSON: {"schema": {"type": "string"}}},
        },
        **problems(BatchNotFound, AuditNotInBatch, TooManyStreams),
    },
)
async def batch_results(
    batch: CurrentBatch,  # first: a request without a key is a 401, whatever the slots
    slot: StreamSlot,
    request: Request,
    after: Annotated[
        UUID | None, Query(description="Start after this audit of the batch (to resume).")
    ] = None,
) -> StreamingResponse:
    """Stream the batch's audits as NDJSON, a chunk at a time, without holding a connection.

    At most `MAX_RESULT_STREAMS` at once per API process: beyond, 429 `too_many_streams`
    with `Retry-After`.
    """
    async with statements(request) as conn:
        first = await batches.results_after(conn, batch_id=batch.id, after=after, limit=CHUNK)
    if first is None:
        raise AuditNotInBatch(f"Audit {after} is not an audit of batch {batch.id}.")
    lines = stream_results(request.app.state.engine, batch_id=batch.id, first=first)
    return StreamingResponse(lines, media_type=NDJSON)


@router.get("/{batch_id}/deliveries", responses=problems(BatchNotFound, InvalidCursor))
async def batch_deliveries(
    batch: CurrentBatch,
    request: Request,
    cursor_key: CursorKey,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> DeliveryPage:
    """The batch's own webhook events (`batch.completed`, `batch.cancelled`), newest first,
    each with its tries and its next one; its audits' are under each audit."""
    async with statements(request) as conn:
        items, next_cursor = await webhooks.deliveries(
            conn, batch_id=batch.id, limit=limit, cursor=cursor, cursor_key=cursor_key
        )
    return DeliveryPage(items=items, next_cursor=next_cursor)
