"""The audits API: submit, read, list, cancel, retry and rerun."""

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator, BeforeValidator

from api.auth import CurrentCaller
from api.deps import (
    CurrentAudit,
    CurrentSubmitter,
    CursorKey,
    IdempotencyKey,
    PageCursor,
    PageLimit,
    SettingsDep,
    TenantFilter,
    Transaction,
    check_callback,
    mark_created,
    quota_of,
    set_location,
    statements,
    submission,
    tenant_limits,
)
from api.openapi import RERUN_PROBLEMS, SUBMIT_PROBLEMS, problems
from shared import tracing
from shared.audits import service as audits
from shared.audits.exceptions import (
    AuditNotCancellable,
    AuditNotFound,
    AuditNotRetryable,
)
from shared.audits.priority import Priority
from shared.audits.repository import AuditFilters
from shared.audits.schemas import AuditCreate, AuditDetail, AuditPage, AuditRead, NoNul
from shared.audits.status import AuditStatus
from shared.audits.views import to_detail, to_read
from shared.idempotency import IdempotencyKeyMismatch
from shared.pagination import DEFAULT_LIMIT, InvalidCursor
from shared.rubrics.exceptions import UnknownRubric
from shared.tenants.quotas import QuotaExceeded
from shared.webhooks import service as webhooks
from shared.webhooks.callbacks import CallbackUrlNotAllowed, WebhooksNotConfigured
from shared.webhooks.schemas import DeliveryPage

router = APIRouter(prefix="/audits", tags=["audits"])


def _not_a_number(value: object) -> object:
    """Only dates as text: pydantic alone reads `2026` or `20261130` as seconds since 1970."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return value
        raise ValueError("must be an ISO 8601 date-time, e.g. 2026-11-30T00:00:00Z")
    return value


def _as_utc(moment: datetime) -> datetime:
    """A naive time is taken as UTC; an aware one near year 1 or 9999 may have no UTC twin."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("is outside the supported range once converted to UTC") from exc


Timestamp = Annotated[datetime, BeforeValidator(_not_a_number), AfterValidator(_as_utc)]


@router.post(
    "",
    status_code=202,
    responses=problems(
        UnknownRubric,
        IdempotencyKeyMismatch,
        CallbackUrlNotAllowed,
        WebhooksNotConfigured,
        extra=SUBMIT_PROBLEMS,
    ),
)
async def create_audit(
    body: AuditCreate,
    submitter: CurrentSubmitter,
    request: Request,
    response: Response,
    idempotency_key: IdempotencyKey = None,
) -> AuditRead:
    """Record an audit and queue it; poll `Location` for its progress.

    With an `Idempotency-Key` the tenant has sent before, the audit it created is
    returned (header `Idempotent-Replayed: true`) and nothing new is queued. Beyond the
    tenant's quotas: 429 `quota_exceeded` or `rate_limited`, with `Retry-After`; beyond
    its monthly budget, 429 `budget_exhausted`, until the budget resets or is raised. With
    a `callback_url`, its end is sent there, signed (the README's Webhooks section).
    """
    limits = await tenant_limits(request, submitter.caller)
    await check_callback(request, body.callback_url, submitter.caller, limits)
    async with submission(request, submitter.caller.tenant, limits) as conn:
        created = await audits.create(
            conn,
            data=body,
            tenant=submitter.caller.tenant,
            settings=submitter.settings,
            max_queued=limits.max_queued,
            monthly_budget=limits.monthly_budget_usd,
            request_id=request.state.request_id,
            trace_context=tracing.current_context(),
            idempotency_key=idempotency_key,
        )
    mark_created(request, response, created, route="get_audit", audit_id=created.resource.id)
    return to_read(created.resource)


@router.get("/{audit_id}", responses=problems(AuditNotFound))
async def get_audit(audit: CurrentAudit) -> AuditDetail:
    """One audit, with its content, result or error."""
    return to_detail(audit)


@router.get("", responses=problems(InvalidCursor))
async def list_audits(
    request: Request,
    caller: CurrentCaller,
    cursor_key: CursorKey,
    tenant: TenantFilter = None,
    status: Annotated[
        list[AuditStatus] | None, Query(description="Repeat to match several.")
    ] = None,
    batch_id: UUID | None = None,
    rubric: Annotated[Annotated[str, NoNul] | None, Query(max_length=64)] = None,
    priority: Priority | None = None,
    created_after: Timestamp | None = None,
    created_before: Timestamp | None = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> AuditPage:
    """Audits, newest first; follow `next_cursor` for the next page."""
    filters = AuditFilters(
        tenant=caller.listing(tenant),
        status=status or (),
        batch_id=batch_id,
        rubric=rubric,
        priority=priority,
        created_after=created_after,
        created_before=created_before,
    )
    async with statements(request) as conn:
        rows, next_cursor = await audits.list_page(
            conn, filters=filters, limit=limit, cursor=cursor, cursor_key=cursor_key
        )
    return AuditPage(items=[to_read(row) for row in rows], next_cursor=next_cursor)


# Cancel and retry take the id, not `CurrentAudit`: each is one conditional UPDATE, and
# only when it changes nothing is the audit read, to say why. Each runs in a transaction:
# a cancel may end a batch, whose webhook event is written with it; a retry counts
# against the quota.
@router.post("/{audit_id}/cancel", responses=problems(AuditNotFound, AuditNotCancellable))
async def cancel_audit(
    audit_id: UUID, caller: CurrentCaller, transaction: Transaction
) -> AuditRead:
    """Cancel a queued or running audit (a running model call is aborted, best effort)."""
    return to_read(await audits.cancel(transaction, audit_id=audit_id, tenant=caller.scope))


@router.post(
    "/{audit_id}/retry",
    status_code=202,
    responses=problems(AuditNotFound, AuditNotRetryable, QuotaExceeded),
)
async def retry_audit(
    audit_id: UUID,
    caller: CurrentCaller,
    transaction: Transaction,
    request: Request,
    response: Response,
    settings: SettingsDep,
) -> AuditRead:
    """Queue a failed or cancelled audit again; it counts against its tenant's quota."""
    audit = await audits.retry(
        transaction,
        audit_id=audit_id,
        tenant=caller.scope,
        settings=settings,
        quota=quota_of(request),
    )
    set_location(request, response, "get_audit", audit_id=audit_id)
    return to_read(audit)


@router.post(
    "/{audit_id}/rerun",
    status_code=202,
    responses=problems(AuditNotFound, UnknownRubric, IdempotencyKeyMismatch, extra=RERUN_PROBLEMS),
)
async def rerun_audit(
    audit_id: UUID,
    caller: CurrentCaller,
    transaction: Transaction,
    request: Request,
    response: Response,
    settings: SettingsDep,
    idempotency_key: IdempotencyKey = None,
) -> AuditRead:
    """Queue a new audit with the same inputs (content, criteria, model, samples); poll
    `Location`. It links back through `rerun_of` and shows the provenance of its own run.

    It is submitted as `POST /audits` would submit it: it counts as a submission of the
    caller and against the audit's tenant's quota, and an `Idempotency-Key` makes it safe
    to repeat (the same key re-running another audit: 422 `idempotency_key_mismatch`).
    """
    await tenant_limits(request, caller)
    created = await audits.rerun(
        transaction,
        audit_id=audit_id,
        tenant=caller.scope,
        settings=settings,
        quota=quota_of(request),
        request_id=request.state.request_id,
        trace_context=tracing.current_context(),
        idempotency_key=idempotency_key,
    )
    mark_created(request, response, created, route="get_audit", audit_id=created.resource.id)
    return to_read(created.resource)


@router.get("/{audit_id}/deliveries", responses=problems(AuditNotFound, InvalidCursor))
async def audit_deliveries(
    audit: CurrentAudit,
    request: Request,
    cursor_key: CursorKey,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> DeliveryPage:
    """The audit's webhook events, newest first, each with its tries and its next one."""
    async with statements(request) as conn:
        items, next_cursor = await webhooks.deliveries(
            conn, audit_id=audit.id, limit=limit, cursor=cursor, cursor_key=cursor_key
        )
    return DeliveryPage(items=items, next_cursor=next_cursor)
