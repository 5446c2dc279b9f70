"""What clients can do with audits.

Functions take a `Statements` first (shared/db.py) and never commit: each is one
statement, or several that need no common snapshot, so the API runs them on a
statement connection; a batch runs `new_audit` and `resolve_criteria` inside its own
transaction, and a cancel or a retry runs in one. Jobs are deferred on the connection
and sent after it (shared/queue.py).
"""

from dataclasses import asdict, dataclass
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

from shared.audits import limits
from shared.audits import repository as audits
from shared.audits.exceptions import AuditNotCancellable, AuditNotFound, AuditNotRetryable
from shared.audits.priority import Priority
from shared.audits.repository import AuditFilters, AuditRow, NewAudit
from shared.audits.schemas import AuditCreate, AuditFields, Criterion
from shared.audits.status import AuditStatus
from shared.config import Settings
from shared.db import Statements
from shared.idempotency import Created, replay, request_hash, rerun_hash, winner
from shared.pagination import Cursors, listing, split_page
from shared.queue import defer_abort, defer_run
from shared.rubrics import repository as rubrics
from shared.rubrics.exceptions import UnknownRubric
from shared.spend import budgets
from shared.tenants import quotas
from shared.webhooks import outbox


@dataclass(frozen=True)
class ResolvedCriteria:
    """The criteria snapshot an audit runs with, and the rubric it came from, if any."""

    criteria: list[Criterion]
    rubric_name: str | None = None
    rubric_version: int | None = None


RubricCache = dict[tuple[str, int | None], ResolvedCriteria]


def new_audit(
    data: AuditFields,
    *,
    tenant: str,
    settings: Settings,
    criteria: ResolvedCriteria,
    batch_id: UUID | None = None,
    batch_index: int | None = None,
    priority: Priority = Priority.INTERACTIVE,
    request_id: str | None = None,
    trace_context: str | None = None,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    rerun_of: UUID | None = None,
    callback_url: str | None = None,
) -> NewAudit:
    """A new queued audit, for single and batch inserts."""
    return NewAudit(
        id=uuid4(),
        tenant=tenant,
        status=AuditStatus.QUEUED,
        subject=data.subject,
        content=data.content,
        criteria=[c.model_dump() for c in criteria.criteria],
        rubric_name=criteria.rubric_name,
        rubric_version=criteria.rubric_version,
        model=model_of(data, settings),
        metadata=data.metadata,
        pass_threshold=data.pass_threshold,
        batch_id=batch_id,
        batch_index=batch_index,
        priority=data.priority or priority,
        attempts=0,
        attempt_limit=settings.max_attempts,
        request_id=request_id,
        trace_context=trace_context,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        samples=data.samples,
        rerun_of=rerun_of,
        callback_url=callback_url,
    )


async def create(
    conn: Statements,
    *,
    data: AuditCreate,
    tenant: str,
    settings: Settings,
    max_queued: int | None = None,
    monthly_budget: Decimal | None = None,
    request_id: str | None = None,
    trace_context: str | None = None,
    idempotency_key: str | None = None,
    rerun_of: UUID | None = None,
) -> Created[AuditRow]:
    """Record a queued audit of `tenant` in one INSERT; its job is sent after it.

    `trace_context`: the request's, which the audit's attempts continue (shared/tracing.py).
    `rerun_of`: the audit whose inputs `data` repeats (`rerun`).

    With an `idempotency_key` the tenant already used, the earlier audit is returned
    instead. The rubric it names, if any, is read first: rubric versions never change,
    so the statements need no common transaction, unless the tenant has a quota
    (`max_queued`): then `conn` must be a transaction, which its count and insert share.
    A tenant that has spent its `monthly_budget` is refused (shared/spend/budgets.py).
    """
    limits.check(data, settings)
    digest = None
    if idempotency_key is not None:
        digest = request_hash(data) if rerun_of is None else rerun_hash(rerun_of)
    if max_queued is not None:
        await quotas.lock(conn, tenant=tenant)
    if earlier := await _replay(conn, tenant, idempotency_key, digest):
        return earlier
    if max_queued is not None:
        await quotas.check_room(conn, tenant=tenant, max_queued=max_queued, adding=1)
    await budgets.check_tenant(conn, tenant=tenant, monthly_budget=monthly_budget)
    criteria = await resolve_criteria(conn, tenant=tenant, data=data)
    limits.check_prompts(prompt_problems(data, criteria, settings))
    audit = new_audit(
        data,
        tenant=tenant,
        settings=settings,
        criteria=criteria,
        request_id=request_id,
        trace_context=trace_context,
        idempotency_key=idempotency_key,
        request_hash=digest,
        rerun_of=rerun_of,
        callback_url=data.callback_url,
    )
    row = await audits.insert(conn, audit)
    if row is None:  # a concurrent request with the same key won the insert
        return winner(await _replay(conn, tenant, idempotency_key, digest))
    defer_run(conn, row.run)
    return Created(row)


async def rerun(
    conn: Statements,
    *,
    audit_id: UUID,
    tenant: str | None,
    settings: Settings,
    quota: quotas.QuotaOf,
    request_id: str | None = None,
    trace_context: str | None = None,
    idempotency_key: str | None = None,
) -> Created[AuditRow]:
    """A new audit of the same inputs as `audit_id`, if `tenant` (None: any) reaches it.

    In a transaction. The new audit belongs to the original's tenant (its rubric is that
    tenant's) and counts against its quota and monthly budget; it is submitted as
    `POST /audits` submits, so it is checked against the deployment's limits as they stand
    now, and it runs as an `interactive` audit of its own, outside any batch.
    """
    source = await get_or_raise(conn, audit_id=audit_id, tenant=tenant)
    await budgets.check_tenant_now(conn, tenant=source.tenant)
    return await create(
        conn,
        data=inputs_of(source),
        tenant=source.tenant,
        settings=settings,
        max_queued=await quota(source.tenant),
        request_id=request_id,
        trace_context=trace_context,
        idempotency_key=idempotency_key,
        rerun_of=source.id,
    )


def inputs_of(audit: AuditRow) -> AuditCreate:
    """What an audit was asked, as the request that would ask it again: its content, its
    criteria (the rubric version it referenced, or the inline snapshot), model and samples."""
    by_rubric = audit.rubric_name is not None
    return AuditCreate(
        subject=audit.subject,
        content=audit.content,
        criteria=None if by_rubric else [Criterion.model_validate(c) for c in audit.criteria],
        rubric=audit.rubric_name,
        rubric_version=audit.rubric_version,
        model=audit.model,
        metadata=audit.metadata,
        pass_threshold=audit.pass_threshold,
        samples=audit.samples,
    )


def model_of(data: AuditFields, settings: Settings) -> str:
    """The model an audit runs with: the one it asks for, else `OPENAI_MODEL`."""
    return data.model or settings.openai_model


def prompt_problems(
    data: AuditFields,
    criteria: ResolvedCriteria,
    settings: Settings,
    *,
    loc: limits.Loc = ("body",),
) -> list[dict[str, Any]]:
    """`limits.prompt_problems` of an audit, with the criteria and model it will run with."""
    model = model_of(data, settings)
    return limits.prompt_problems(data, criteria.criteria, model, settings, loc=loc)


async def _replay(
    conn: Statements, tenant: str, key: str | None, digest: str | None
) -> Created[AuditRow] | None:
    """The audit an earlier request of the tenant with this key created, if any (same body
    or 422); None without a key."""
    if key is None:
        return None
    earlier = await audits.get_by_idempotency_key(conn, tenant=tenant, key=key)
    if earlier is None:
        return None
    assert digest is not None, "a keyed request has its digest"
    return replay(earlier, stored_hash=earlier.request_hash, new_hash=digest, key=key)


async def resolve_criteria(
    conn: Statements, *, tenant: str, data: AuditFields, cache: RubricCache | None = None
) -> ResolvedCriteria:
    """The criteria an audit will run with: inline ones, or the tenant's rubric's.

    A batch passes a `cache`, so each rubric it names is read once, not per item.
    """
    if data.criteria is not None:
        return ResolvedCriteria(criteria=list(data.criteria))
    assert data.rubric is not None  # AuditFields demands one of the two
    cache = {} if cache is None else cache
    wanted = (data.rubric, data.rubric_version)
    if wanted not in cache:
        rubric = await rubrics.find(
            conn, tenant=tenant, name=data.rubric, version=data.rubric_version
        )
        if rubric is None:
            raise UnknownRubric(_unknown_rubric(*wanted), rubric=data.rubric)
        cache[wanted] = ResolvedCriteria(
            criteria=[Criterion.model_validate(c) for c in rubric.criteria],
            rubric_name=rubric.name,
            rubric_version=rubric.version,
        )
    return cache[wanted]


def _unknown_rubric(name: str, version: int | None) -> str:
    if version is None:
        return f"No rubric is named {name!r}; publish it with POST /rubrics first."
    return f"Rubric {name!r} has no version {version}."


async def get_or_raise(conn: Statements, *, audit_id: UUID, tenant: str | None) -> AuditRow:
    """The audit, if `tenant` owns it (None: any tenant); another tenant's is not found."""
    audit = await audits.get(conn, audit_id, tenant=tenant)
    if audit is None:
        raise _not_found(audit_id)
    return audit


def _not_found(audit_id: UUID) -> AuditNotFound:
    return AuditNotFound(f"No audit has id {audit_id}.")


async def list_page(
    conn: Statements,
    *,
    filters: AuditFilters,
    limit: int,
    cursor: str | None,
    cursor_key: bytes,
) -> tuple[list[AuditRow], str | None]:
    """A page of audits, newest first, and the cursor of the next page (None at the end)."""
    cursors = page_cursors(cursor_key, filters)
    after = None if cursor is None else cursors.read_keyset(cursor)
    rows = await audits.page(conn, filters=filters, limit=limit + 1, after=after)
    return split_page(rows, limit=limit, cursor_of=lambda a: cursors.keyset(a.created_at, a.id))


def page_cursors(key: bytes, filters: AuditFilters) -> Cursors:
    """The cursors of `GET /audits` with these filters: valid with the same filters only."""
    return Cursors(key, listing("audits", asdict(filters)))


async def cancel(conn: Statements, *, audit_id: UUID, tenant: str | None) -> AuditRow:
    """Cancel a queued or running audit; a running job is aborted after commit.

    In a transaction: the event of the batch the cancel may end is written with it.
    """
    audit = await audits.cancel(conn, audit_id, tenant=tenant)
    if audit is None:
        status = await _status_or_raise(conn, audit_id, tenant)
        raise AuditNotCancellable(
            f"Audit {audit_id} is already {status}; only queued or running audits "
            "can be cancelled.",
            audit_status=status,
        )
    defer_abort(conn, audit_id)
    await outbox.batches_may_have_ended(conn, [audit.batch_id])
    return audit


async def retry(
    conn: Statements,
    *,
    audit_id: UUID,
    tenant: str | None,
    settings: Settings,
    quota: quotas.QuotaOf,
) -> AuditRow:
    """Queue a failed or cancelled audit again, with a fresh budget of `MAX_ATTEMPTS`.

    In a transaction: where the audit's tenant has a quota, the audit queued again
    counts against it (shared/tenants/quotas.py).
    """
    owner = await audits.tenant_of(conn, audit_id, tenant=tenant)
    if owner is None:
        raise _not_found(audit_id)
    max_queued = await quota(owner)
    if max_queued is not None:
        await quotas.lock(conn, tenant=owner)
    audit = await audits.requeue_for_retry(
        conn, audit_id, tenant=tenant, attempts=settings.max_attempts
    )
    if audit is None:
        status = await _status_or_raise(conn, audit_id, tenant)
        raise AuditNotRetryable(
            f"Audit {audit_id} is {status}; only failed or cancelled audits can be retried.",
            audit_status=status,
        )
    if max_queued is not None:
        await quotas.check_requeued(conn, tenant=owner, max_queued=max_queued, requeued=1)
    defer_run(conn, audit.run)
    return audit


async def _status_or_raise(conn: Statements, audit_id: UUID, tenant: str | None) -> AuditStatus:
    status = await audits.status_of(conn, audit_id, tenant=tenant)
    if status is None:
        raise _not_found(audit_id)
    return status
