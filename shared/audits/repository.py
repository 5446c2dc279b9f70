"""Every statement on the `audit` table, and the typed rows they return.

SQL is written once, here, with `$n` placeholders, and runs on any `Statements`
(shared/db.py). The caller picks the handle by operation: a statement connection for
what is one statement (submit, read, cancel or retry one audit, a page of a list, the
worker's claim and fenced writes), a session's transaction for units of work (a batch
and its audits, a batch's cancel, the reconciler's recovery, retention).

The worker's transitions are each one conditional UPDATE:
- `claim` takes a queued audit, or a running one whose lease expired, and counts the
  attempt, unless its batch or its tenant has spent its budget. Nothing claimed means
  the job is a duplicate, or the audit is held by a budget (`held_by` says which).
- Every later write is fenced by `status = 'running' AND attempts = <attempt>`, so
  the late write of a zombie, a cancelled run or an earlier attempt changes nothing:
  an audit reaches exactly one terminal state, written once.
- Each of those writes adds the attempt's charge (tokens and USD of its answered calls)
  to the audit's usage, to its batch's spend if the batch has a budget, and to its
  tenant's month, in the same statement, fenced with it: a usage is the sum over every
  attempt, and a retried write cannot count twice. A reply that comes back to an
  attempt that had lost the audit (cancelled meanwhile, or a zombie) is not counted.

Every UPDATE that can end an audit (`_ending`: a finish, a cancel, the reconciler's
failure) writes, in the same statement, the webhook event of each audit it ends with a
callback: an end never commits without its event (shared/webhooks/repository.py).
"""

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal, Self
from uuid import UUID

from pydantic import TypeAdapter

from shared.audits.priority import Priority
from shared.audits.schemas import AuditResult, Criterion
from shared.audits.status import RETRYABLE, TERMINAL, UNFINISHED, AuditStatus, sql_list
from shared.batches import repository as batches
from shared.db import Statements
from shared.fair_queue import QueuedRun
from shared.spend import repository as spend
from shared.spend.charges import Charge
from shared.webhooks.repository import audit_events_cte

Q, R, S, F, C = (f"'{s}'" for s in AuditStatus)  # queued, running, succeeded, failed, cancelled


@dataclass(frozen=True, slots=True)
class NewAudit:
    """The columns a new audit is inserted with; the rest start NULL or at their default."""

    id: UUID
    tenant: str
    status: AuditStatus
    subject: str
    content: str
    criteria: list[dict[str, Any]]
    rubric_name: str | None
    rubric_version: int | None
    model: str
    metadata: dict[str, Any]
    pass_threshold: float
    batch_id: UUID | None
    batch_index: int | None
    priority: Priority
    attempts: int
    attempt_limit: int
    request_id: str | None
    # The W3C trace context the worker's spans continue (shared/tracing.py); None: untraced.
    trace_context: str | None
    idempotency_key: str | None
    request_hash: str | None
    samples: int
    # The audit this one re-runs; a plain id, no foreign key: retention may delete the
    # original first, and the link still says where the audit came from.
    rerun_of: UUID | None
    callback_url: str | None

    @property
    def run(self) -> QueuedRun:
        """What the fair queue needs to queue this audit's run."""
        return QueuedRun(self.id, self.tenant, self.priority, self.batch_id)


@dataclass(frozen=True, slots=True)
class AuditRow(NewAudit):
    """One row of `audit`, every column by its column name (tests hold it to the table):
    what it was inserted with, and what the database and the worker added."""

    result: dict[str, Any] | None
    error_code: str | None
    error_message: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: Decimal | None
    prompt_version: str | None
    provider_request_id: str | None
    served_model: str | None
    schema_sha256: str | None
    temperature: float | None
    seed: int | None
    auditq_version: str | None
    lease_until: datetime | None
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        values = dict(record)
        values["status"] = AuditStatus(values["status"])
        values["priority"] = Priority(values["priority"])
        return cls(**values)


_NEW_COLUMNS = tuple(f.name for f in fields(NewAudit))
COLUMNS = tuple(f.name for f in fields(AuditRow))
_ADDED_LATER = dict.fromkeys(name for name in COLUMNS if name not in _NEW_COLUMNS)
_JSONB = frozenset({"criteria", "metadata", "result"})
_JSONB_AT = [index for index, name in enumerate(_NEW_COLUMNS) if name in _JSONB]
_CRITERIA_AT = _NEW_COLUMNS.index("criteria")
# An audit of a rubric stores a reference to its version, not a copy of its criteria
# (versions never change); reads look the rubric's up. Rows written before that
# (migration 0004) keep their copy, which reads prefer: it is the same criteria.
# A subquery rather than a join: `coalesce` stops at a copy, so an audit with inline
# criteria (most) reads no rubric and its statement plans no join.
_CRITERIA = (
    "coalesce(audit.criteria, (SELECT rubric.criteria FROM rubric WHERE "
    "(rubric.tenant, rubric.name, rubric.version) "
    "= (audit.tenant, audit.rubric_name, audit.rubric_version)))"
)
_ROW = ", ".join(f"{_CRITERIA} AS criteria" if c == "criteria" else f"audit.{c}" for c in COLUMNS)
_SELECT = f"SELECT {_ROW} FROM audit"


# A function takes at most 100 arguments: 25 columns (50) to each `jsonb_build_object`.
_SNAPSHOT_PART = 25
_SNAPSHOT_PAIRS = [
    f"'{c}', {_CRITERIA if c == 'criteria' else f'audit.{c}'}" for c in COLUMNS if c != "content"
]
# An audit as its webhook event keeps it: every column but the content, as JSON.
_SNAPSHOT = " || ".join(
    f"jsonb_build_object({', '.join(_SNAPSHOT_PAIRS[at : at + _SNAPSHOT_PART])})"
    for at in range(0, len(_SNAPSHOT_PAIRS), _SNAPSHOT_PART)
)


def _ending(update: str, returning: str, *, also: str = "") -> str:
    """An UPDATE that may end audits (without its RETURNING), answering `returning` of the
    rows it changed, that also writes the webhook event of each audit it ends with a
    callback: in the same statement, so an end never commits without its event. `also`:
    more CTEs run with it, reading the changed rows as `audit`."""
    more = f", {also}" if also else ""
    return (
        f"WITH audit AS ({update} RETURNING audit.*), {audit_events_cte(_SNAPSHOT)}{more} "
        f"SELECT {returning} FROM audit"
    )


def _stored(audit: NewAudit) -> list[Any]:
    """The audit's columns as stored: JSONB as JSON text (the codec of the pool's
    connections), and a rubric's criteria left in the rubric."""
    values = [getattr(audit, name) for name in _NEW_COLUMNS]
    for index in _JSONB_AT:
        if values[index] is not None:
            values[index] = json.dumps(values[index])
    if audit.rubric_name is not None:
        values[_CRITERIA_AT] = None
    return values


# --- Creating ---------------------------------------------------------------------------

_INSERT = (
    f"INSERT INTO audit ({', '.join(_NEW_COLUMNS)}) "
    f"VALUES ({', '.join(f'${n}' for n in range(1, len(_NEW_COLUMNS) + 1))}) "
    "ON CONFLICT (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
    "RETURNING created_at, updated_at"
)


async def insert(conn: Statements, audit: NewAudit) -> AuditRow | None:
    """Insert one audit; None when its idempotency key is already taken."""
    returned = await conn.fetchrow(_INSERT, *_stored(audit))
    if returned is None:
        return None
    inserted = {name: getattr(audit, name) for name in _NEW_COLUMNS}
    return AuditRow(**inserted, **{**_ADDED_LATER, **returned})


def _array_type(name: str) -> str:
    types = {"id": "uuid", "batch_id": "uuid", "rubric_version": "int", "batch_index": "int"}
    types |= {"attempts": "int", "attempt_limit": "int", "pass_threshold": "float8"}
    types |= {"samples": "int", "rerun_of": "uuid"}
    return types.get(name, "text")


# One statement for any number of rows: each column travels as one array parameter.
_INSERT_MANY = (
    f"INSERT INTO audit ({', '.join(_NEW_COLUMNS)}) SELECT "
    + ", ".join(f"{n}::jsonb" if n in _JSONB else n for n in _NEW_COLUMNS)
    + " FROM unnest("
    + ", ".join(f"${i}::{_array_type(n)}[]" for i, n in enumerate(_NEW_COLUMNS, start=1))
    + f") AS t({', '.join(_NEW_COLUMNS)})"
)


async def insert_many(conn: Statements, audits: Sequence[NewAudit]) -> None:
    """Insert many audits in one statement (no idempotency key: a batch carries it)."""
    rows = [_stored(audit) for audit in audits]
    await conn.execute(_INSERT_MANY, *([row[i] for row in rows] for i in range(len(_NEW_COLUMNS))))


# --- Reading ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scoped:
    """A statement on one audit by id, as any tenant's (an admin) or as one tenant's.

    Two statements rather than `$n IS NULL OR …`, so each is planned for what it does.
    The tenant's takes it as one more parameter, after the others.
    """

    any_tenant: str
    one_tenant: str

    def bind(self, tenant: str | None, *args: Any) -> tuple[Any, ...]:
        """The statement for `tenant` (None: any) and its arguments."""
        return (self.any_tenant, *args) if tenant is None else (self.one_tenant, *args, tenant)


def _scoped(statement: str, *, parameters: int = 1) -> Scoped:
    """`statement` with `{owned}` where the tenant's condition goes (after `parameters`)."""
    return Scoped(
        statement.format(owned=""),
        statement.format(owned=f" AND audit.tenant = ${parameters + 1}"),
    )


_BY_ID = _scoped(f"{_SELECT} WHERE audit.id = $1{{owned}}")
_STATUS = _scoped("SELECT status FROM audit WHERE audit.id = $1{owned}")
_TENANT = _scoped("SELECT tenant FROM audit WHERE audit.id = $1{owned}")
_BY_IDEMPOTENCY_KEY = f"{_SELECT} WHERE audit.tenant = $1 AND audit.idempotency_key = $2"
_BATCH_HAS_UNFINISHED = (
    f"SELECT EXISTS (SELECT 1 FROM audit WHERE batch_id = $1 AND status IN {sql_list(UNFINISHED)})"
)


async def get(conn: Statements, audit_id: UUID, *, tenant: str | None) -> AuditRow | None:
    """The audit `audit_id`, if `tenant` (None: any tenant) owns it."""
    record = await conn.fetchrow(*_BY_ID.bind(tenant, audit_id))
    return None if record is None else AuditRow.of(record)


async def get_by_idempotency_key(conn: Statements, *, tenant: str, key: str) -> AuditRow | None:
    record = await conn.fetchrow(_BY_IDEMPOTENCY_KEY, tenant, key)
    return None if record is None else AuditRow.of(record)


async def batch_has_unfinished(conn: Statements, batch_id: UUID) -> bool:
    """Whether any audit of the batch is still queued or running."""
    unfinished: bool = await conn.fetchval(_BATCH_HAS_UNFINISHED, batch_id)
    return unfinished


async def tenant_of(conn: Statements, audit_id: UUID, *, tenant: str | None) -> str | None:
    """The tenant that owns the audit, if `tenant` (None: any tenant) may reach it."""
    owner: str | None = await conn.fetchval(*_TENANT.bind(tenant, audit_id))
    return owner


async def status_of(conn: Statements, audit_id: UUID, *, tenant: str | None) -> AuditStatus | None:
    status = await conn.fetchval(*_STATUS.bind(tenant, audit_id))
    return None if status is None else AuditStatus(status)


@dataclass(frozen=True)
class AuditFilters:
    tenant: str | None = None
    status: Sequence[AuditStatus] = ()
    batch_id: UUID | None = None
    rubric: str | None = None
    priority: Priority | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None


Keyset = tuple[datetime, UUID]


class _Arguments(list[Any]):
    def add(self, value: Any) -> str:
        """Bind `value`; its placeholder."""
        self.append(value)
        return f"${len(self)}"


def page_query(*, filters: AuditFilters, limit: int, after: Keyset | None) -> tuple[str, list[Any]]:
    """The SQL of `page` and its arguments.

    Each filter is a plain condition, a status list an `IN` (one status is then `=`),
    so every combination is served by an index on `(…, created_at DESC, id DESC)`.
    """
    args = _Arguments()
    conditions = []
    if filters.tenant is not None:
        conditions.append(f"audit.tenant = {args.add(filters.tenant)}")
    if filters.status:
        conditions.append(
            f"audit.status IN ({', '.join(args.add(str(s)) for s in filters.status)})"
        )
    if filters.batch_id:
        conditions.append(f"audit.batch_id = {args.add(filters.batch_id)}")
    if filters.rubric:
        conditions.append(f"audit.rubric_name = {args.add(filters.rubric)}")
    if filters.priority:
        conditions.append(f"audit.priority = {args.add(str(filters.priority))}")
    if filters.created_after:
        conditions.append(f"audit.created_at > {args.add(filters.created_after)}")
    if filters.created_before:
        conditions.append(f"audit.created_at < {args.add(filters.created_before)}")
    if after is not None:
        conditions.append(
            f"(audit.created_at, audit.id) < ({args.add(after[0])}, {args.add(after[1])})"
        )
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    return (
        f"{_SELECT}{where} ORDER BY audit.created_at DESC, audit.id DESC LIMIT {args.add(limit)}",
        args,
    )


async def page(
    conn: Statements, *, filters: AuditFilters, limit: int, after: Keyset | None
) -> list[AuditRow]:
    """Up to `limit` audits, newest first, strictly after the keyset `after`."""
    query, args = page_query(filters=filters, limit=limit, after=after)
    return [AuditRow.of(record) for record in await conn.fetch(query, *args)]


@dataclass(frozen=True, slots=True)
class BatchTally:
    """A batch's audits of one status: how many, their tokens and cost, their last finish.

    `cost_usd` is None when an audit that used tokens has no cost (its model has no
    price): the total is not known.
    """

    batch_id: UUID
    status: AuditStatus
    count: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: Decimal | None
    last_finished_at: datetime | None


_TALLY = (
    "SELECT batch_id, status, count(*) AS count, "
    "coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
    "coalesce(sum(completion_tokens), 0) AS completion_tokens, "
    "CASE WHEN bool_or(prompt_tokens IS NOT NULL AND cost_usd IS NULL) THEN NULL "
    "ELSE coalesce(sum(cost_usd), 0) END AS cost_usd, "
    "max(finished_at) AS last_finished_at "
    "FROM audit WHERE batch_id = ANY($1::uuid[]) GROUP BY batch_id, status"
)


async def tally_batches(conn: Statements, batch_ids: Sequence[UUID]) -> list[BatchTally]:
    """Counts, tokens and last finish per batch and status, in one grouped query."""
    records = await conn.fetch(_TALLY, list(batch_ids))
    return [BatchTally(**{**r, "status": AuditStatus(r["status"])}) for r in records]


@dataclass(frozen=True, slots=True)
class ResultLine:
    """An audit of a batch and its line of `GET /batches/{id}/results`, as NDJSON text."""

    id: UUID
    line: str


# Built by PostgreSQL, as text: decoding `result` and `metadata` only to encode them again
# cost the API most of a stream's CPU, and under 150 streams it starved submits.
_RESULT_LINE = (
    "json_build_object('id', id, 'subject', subject, 'metadata', metadata, "
    "'status', status, 'result', result, "
    "'error', CASE WHEN error_code IS NOT NULL THEN "
    "json_build_object('code', error_code, 'message', error_message) END, "
    "'usage', CASE WHEN prompt_tokens IS NOT NULL AND completion_tokens IS NOT NULL THEN "
    "json_build_object('prompt_tokens', prompt_tokens, 'completion_tokens', "
    "completion_tokens, 'total_tokens', prompt_tokens + completion_tokens, "
    "'cost_usd', cost_usd) END)::text"
)
_RESULTS = (
    f"SELECT id, {_RESULT_LINE} AS line FROM audit WHERE batch_id = $1 AND batch_index > "
    "coalesce((SELECT batch_index FROM audit WHERE id = $2 AND batch_id = $1), "
    "CASE WHEN $2::uuid IS NULL THEN -1 END) ORDER BY batch_index LIMIT $3"
)
_IN_BATCH = "SELECT EXISTS (SELECT 1 FROM audit WHERE id = $2 AND batch_id = $1)"


async def batch_results(
    conn: Statements, *, batch_id: UUID, after: UUID | None, limit: int
) -> list[ResultLine] | None:
    """Up to `limit` of a batch's audits in submission order, after the audit `after`.

    None when `after` is not an audit of this batch. A keyset on `batch_index`, so each
    chunk is one short indexed query whatever its depth.
    """
    rows = [ResultLine(**r) for r in await conn.fetch(_RESULTS, batch_id, after, limit)]
    if rows or after is None:
        return rows
    return [] if await conn.fetchval(_IN_BATCH, batch_id, after) else None


# --- Quotas -----------------------------------------------------------------------------

# Transaction-scoped: held until the submission that took it commits or rolls back.
_LOCK_SUBMISSIONS = "SELECT pg_advisory_xact_lock(hashtext('auditq.submissions'), hashtext($1))"
# Counted up to `$2` at most: a check against a quota of N reads no more than N rows.
_COUNT_UNFINISHED = (
    "SELECT count(*) FROM (SELECT 1 FROM audit WHERE tenant = $1 "
    f"AND status IN {sql_list(UNFINISHED)} LIMIT $2) AS held"
)


async def lock_submissions(conn: Statements, *, tenant: str) -> None:
    """Serialize the tenant's counted submissions until this transaction ends.

    Under READ COMMITTED each statement sees what committed before it began, so the
    next submitter's count, made once it holds the lock, includes this one's audits.
    """
    await conn.fetchval(_LOCK_SUBMISSIONS, tenant)


async def count_unfinished(conn: Statements, *, tenant: str, at_most: int) -> int:
    """The tenant's queued and running audits, counted up to `at_most`."""
    count: int = await conn.fetchval(_COUNT_UNFINISHED, tenant, at_most)
    return count


# --- Client transitions -----------------------------------------------------------------

_CANCEL_UNFINISHED = (
    f"UPDATE audit SET status = {C}, finished_at = now(), lease_until = NULL, "
    f"updated_at = now() WHERE status IN {sql_list(UNFINISHED)}"
)
_CANCEL = _scoped(_ending(f"{_CANCEL_UNFINISHED} AND id = $1{{owned}}", _ROW))
# `attempts` keeps counting (it fences late writes of earlier runs); the budget moves.
_REQUEUE = (
    f"UPDATE audit SET status = {Q}, attempt_limit = attempts + $2, result = NULL, "
    "error_code = NULL, error_message = NULL, started_at = NULL, finished_at = NULL, "
    "lease_until = NULL, updated_at = now()"
)
_RETRY = _scoped(
    f"WITH audit AS ({_REQUEUE} WHERE id = $1 AND status IN {sql_list(RETRYABLE)}{{owned}} "
    f"RETURNING audit.*) SELECT {_ROW} FROM audit",
    parameters=2,
)
_RUN = "id, tenant, priority, batch_id"
_RETRY_BATCH = f"{_REQUEUE} WHERE batch_id = $1 AND status = $3 RETURNING {_RUN}"
_CANCEL_BATCH = _ending(f"{_CANCEL_UNFINISHED} AND batch_id = $1", "id")


async def cancel(conn: Statements, audit_id: UUID, *, tenant: str | None) -> AuditRow | None:
    """Cancel a queued or running audit; None when it is neither (or not `tenant`'s)."""
    record = await conn.fetchrow(*_CANCEL.bind(tenant, audit_id))
    return None if record is None else AuditRow.of(record)


async def requeue_for_retry(
    conn: Statements, audit_id: UUID, *, tenant: str | None, attempts: int
) -> AuditRow | None:
    """Queue a failed or cancelled audit again with `attempts` more; None otherwise."""
    record = await conn.fetchrow(*_RETRY.bind(tenant, audit_id, attempts))
    return None if record is None else AuditRow.of(record)


def _queued_run(record: Mapping[str, Any]) -> QueuedRun:
    return QueuedRun(
        record["id"], record["tenant"], Priority(record["priority"]), record["batch_id"]
    )


async def requeue_batch_for_retry(
    conn: Statements, batch_id: UUID, *, status: AuditStatus, attempts: int
) -> list[QueuedRun]:
    """Queue the batch's audits in `status` (failed or cancelled) again; their runs."""
    assert status in RETRYABLE, status
    return [_queued_run(r) for r in await conn.fetch(_RETRY_BATCH, batch_id, attempts, status)]


async def cancel_batch(conn: Statements, batch_id: UUID) -> list[UUID]:
    """Cancel the batch's queued and running audits; their ids."""
    return [record["id"] for record in await conn.fetch(_CANCEL_BATCH, batch_id)]


# --- Reruns -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RerunItem:
    """What the deployment's limits check of an audit a batch's rerun will copy."""

    batch_index: int
    model: str
    samples: int
    content_chars: int


_RERUN_ITEMS = (
    "SELECT batch_index, model, samples, char_length(content) AS content_chars "
    "FROM audit WHERE batch_id = $1 ORDER BY batch_index"
)
# What a copy takes of its original; the rest is set anew: `$n` parameters, or a fresh run.
_COPIED = {
    "id": "gen_random_uuid()",
    "status": f"{Q}",
    "batch_id": "$2",
    "attempts": "0",
    "attempt_limit": "$3",
    "request_id": "$4",
    "trace_context": "$5",
    "idempotency_key": "NULL",
    "request_hash": "NULL",
    "rerun_of": "id",
    # An audit of a batch with `item_events` holds its batch's URL: a rerun, like its new
    # batch, has no callback (README, "Reruns").
    "callback_url": "NULL",
}
_COPY_BATCH = (
    f"INSERT INTO audit ({', '.join(_NEW_COLUMNS)}) "
    f"SELECT {', '.join(_COPIED.get(name, name) for name in _NEW_COLUMNS)} "
    f"FROM audit WHERE batch_id = $1 RETURNING {_RUN}, batch_index"
)


async def rerun_items(conn: Statements, batch_id: UUID) -> list[RerunItem]:
    """The batch's audits as a rerun would copy them, in submission order."""
    return [RerunItem(**record) for record in await conn.fetch(_RERUN_ITEMS, batch_id)]


async def copy_batch(
    conn: Statements,
    *,
    source_id: UUID,
    batch_id: UUID,
    attempt_limit: int,
    request_id: str | None,
    trace_context: str | None,
) -> list[QueuedRun]:
    """Queue a copy of each audit of batch `source_id` in batch `batch_id`, in one statement
    that never brings the content out of PostgreSQL; their runs, in submission order.

    A copy keeps the inputs (content, criteria or rubric reference, model, samples,
    metadata, priority, index) and links to its original through `rerun_of`.
    """
    records = await conn.fetch(
        _COPY_BATCH, source_id, batch_id, attempt_limit, request_id, trace_context
    )
    ordered = sorted(records, key=lambda record: record["batch_index"])
    return [_queued_run(record) for record in ordered]


# --- The worker's transitions -----------------------------------------------------------

_LEASE_EXPIRED = "lease_until < now()"
_CLAIMABLE = f"(status = {Q} OR (status = {R} AND {_LEASE_EXPIRED})) AND attempts < attempt_limit"
# No audit of a batch or tenant that spent its budget calls the model (shared/spend/budgets.py).
_BATCH_OVER_BUDGET = batches.over_budget("audit.batch_id")
_TENANT_OVER_BUDGET = spend.over_budget("audit.tenant")
_RUNNABLE = f"{_CLAIMABLE} AND NOT {_BATCH_OVER_BUDGET} AND NOT {_TENANT_OVER_BUDGET}"
_EXHAUSTED = "attempts >= attempt_limit"


def _queued_or_failed(*, code: str, message: str) -> str:
    """Back to `queued` while attempts remain, else `failed` with this error (placeholders)."""
    return (
        f"status = CASE WHEN {_EXHAUSTED} THEN {F} ELSE {Q} END, "
        f"error_code = CASE WHEN {_EXHAUSTED} THEN {code} END, "
        f"error_message = CASE WHEN {_EXHAUSTED} THEN {message} END, "
        f"finished_at = CASE WHEN {_EXHAUSTED} THEN now() END"
    )


# What an attempt's answered calls add ($3 prompt and $4 completion tokens, $5 USD): a
# NULL adds nothing, and leaves a NULL (no call answered yet, or no price) as it was.
_CHARGED = (
    "prompt_tokens = coalesce(prompt_tokens + $3, prompt_tokens, $3), "
    "completion_tokens = coalesce(completion_tokens + $4, completion_tokens, $4), "
    "cost_usd = coalesce(cost_usd + $5, cost_usd, $5)"
)
_COST = "$5::numeric"


def _finish(assignments: str) -> str:
    """The fenced write of an attempt's outcome ($1 the audit, $2 the attempt), with its
    charge ($3-$5, and $6 the row of the tenant's month), added to the audit, to the spend
    of its batch if it has a budget, and to its tenant's month, in one statement."""
    charges = (
        f"charged_batch AS ({batches.charge_budget(rows='audit', cost=_COST)}), "
        f"charged_month AS ({spend.charge_month(rows='audit', cost=_COST, shard='$6::smallint')})"
    )
    return _ending(
        f"UPDATE audit SET {assignments}, {_CHARGED}, lease_until = NULL, updated_at = now() "
        f"WHERE id = $1 AND status = {R} AND attempts = $2",
        "status",
        also=charges,
    )


def _charged(charge: Charge | None) -> tuple[Any, ...]:
    """The arguments $3-$6 of a finish."""
    if charge is None:
        return (None, None, None, spend.any_shard())
    return (charge.prompt_tokens, charge.completion_tokens, charge.cost_usd, spend.any_shard())


# Whether the audit's end may send its batch's event: its batch has a callback.
_BATCH_NOTIFIES = (
    "(audit.batch_id IS NOT NULL AND EXISTS (SELECT 1 FROM batch "
    "WHERE batch.id = audit.batch_id AND batch.callback_url IS NOT NULL))"
)
# At least the text's length in characters: `octet_length` reads the content's size
# from its stored header, without fetching it; a rubric's criteria are cast to text.
_NEXT_CALL = (
    "SELECT model, samples, octet_length(subject) + octet_length(content) "
    f"+ octet_length({_CRITERIA}::text) AS text_chars, "
    f"jsonb_array_length({_CRITERIA}) AS criteria "
    f"FROM audit WHERE audit.id = $1 AND {_RUNNABLE}"
)
_CLAIM = (
    f"WITH audit AS (UPDATE audit SET status = {R}, attempts = attempts + 1, "
    "lease_until = now() + $2, started_at = coalesce(started_at, now()), updated_at = now() "
    f"WHERE id = $1 AND {_RUNNABLE} RETURNING audit.*) "
    f"SELECT audit.id, audit.tenant, audit.attempts, audit.model, audit.subject, audit.content, "
    f"{_CRITERIA} AS criteria, audit.pass_threshold, audit.samples, audit.request_id, "
    "audit.trace_context, audit.priority, audit.created_at, audit.batch_id, "
    f"{_BATCH_NOTIFIES} AS batch_notifies FROM audit"
)
_SUCCEED = _finish(
    f"status = {S}, result = $7, prompt_version = $8, provider_request_id = $9, "
    "served_model = $10, schema_sha256 = $11, temperature = $12, seed = $13, "
    "auditq_version = $14, error_code = NULL, error_message = NULL, finished_at = now()"
)
_FAIL = _finish(f"status = {F}, error_code = $7, error_message = $8, finished_at = now()")
_REQUEUE_OR_FAIL = _finish(_queued_or_failed(code="$7::text", message="$8::text"))
# Why a claim found nothing to take although the audit waits to run: a budget.
_HELD_BY = (
    f"SELECT CASE WHEN {_BATCH_OVER_BUDGET} THEN 'batch' WHEN {_TENANT_OVER_BUDGET} "
    f"THEN 'tenant' END AS budget, audit.tenant, audit.batch_id FROM audit "
    f"WHERE audit.id = $1 AND {_CLAIMABLE}"
)
_CANCEL_QUEUED_OF_BATCH = _ending(
    f"UPDATE audit SET status = {C}, error_code = $2, error_message = $3, finished_at = now(), "
    f"lease_until = NULL, updated_at = now() WHERE batch_id = $1 AND status = {Q}",
    "id",
)
_STATUS_LEFT_BY = f"SELECT status FROM audit WHERE id = $1 AND attempts = $2 AND status <> {R}"


@dataclass(frozen=True, slots=True)
class NextCall:
    """The model an attempt will call, and the size of the audit's text it will send."""

    model: str
    samples: int
    text_chars: int
    criteria: int


async def next_call(conn: Statements, *, audit_id: UUID) -> NextCall | None:
    """What a claim of this audit would ask the model (its size, not its content)."""
    record = await conn.fetchrow(_NEXT_CALL, audit_id)
    return None if record is None else NextCall(**record)


@dataclass(frozen=True, slots=True)
class ClaimedAudit:
    """What an attempt needs of the audit it claimed."""

    id: UUID
    tenant: str
    attempts: int
    model: str
    subject: str
    content: str
    criteria: list[Criterion]
    pass_threshold: float
    samples: int
    request_id: str | None
    trace_context: str | None
    priority: Priority
    created_at: datetime
    batch_id: UUID | None
    # Its end may end its batch, whose webhook event is then written with it: the finish
    # runs in a transaction (shared/webhooks/outbox.py).
    batch_notifies: bool


_CLAIMED_CRITERIA = TypeAdapter(list[Criterion])


async def claim(conn: Statements, *, audit_id: UUID, lease: timedelta) -> ClaimedAudit | None:
    """Start an attempt: `running`, `attempts + 1`, leased until now + `lease`."""
    record = await conn.fetchrow(_CLAIM, audit_id, lease)
    if record is None:
        return None
    criteria = _CLAIMED_CRITERIA.validate_python(record["criteria"])
    return ClaimedAudit(
        **{**record, "criteria": criteria, "priority": Priority(record["priority"])}
    )


@dataclass(frozen=True, slots=True)
class RunProvenance:
    """What produced a result, stored with it (the audit's `provenance`)."""

    served_model: str | None
    prompt_version: str
    schema_sha256: str | None
    provider_request_id: str | None
    temperature: float | None
    seed: int | None
    auditq_version: str


async def succeed(
    conn: Statements,
    *,
    audit_id: UUID,
    attempt: int,
    result: AuditResult,
    charge: Charge | None,
    provenance: RunProvenance,
) -> bool:
    """Record the result and the attempt's charge; False when this attempt no longer owns
    the audit (and nothing is charged)."""
    status = await conn.fetchval(
        _SUCCEED,
        audit_id,
        attempt,
        *_charged(charge),
        result.model_dump_json(),
        provenance.prompt_version,
        provenance.provider_request_id,
        provenance.served_model,
        provenance.schema_sha256,
        provenance.temperature,
        provenance.seed,
        provenance.auditq_version,
    )
    return status is not None


async def fail(
    conn: Statements,
    *,
    audit_id: UUID,
    attempt: int,
    code: str,
    message: str,
    charge: Charge | None = None,
) -> bool:
    """End the audit as failed with a stable error code; False when fenced out.

    `charge`: the attempt's answered calls (a refusal, an invalid reply), paid for all
    the same; None when no call was answered.
    """
    status = await conn.fetchval(_FAIL, audit_id, attempt, *_charged(charge), code, message)
    return status is not None


async def requeue_or_fail(
    conn: Statements,
    *,
    audit_id: UUID,
    attempt: int,
    code: str,
    message: str,
    charge: Charge | None = None,
) -> AuditStatus | None:
    """After a transient error: back to `queued`, or `failed` once attempts are used up.

    Returns the new status, or None when this attempt no longer owns the audit.
    The last error is kept on the audit only when it ends it. `charge`: calls answered
    before the error (a corrective call that failed after an invalid reply).
    """
    status = await conn.fetchval(
        _REQUEUE_OR_FAIL, audit_id, attempt, *_charged(charge), code, message
    )
    return None if status is None else AuditStatus(status)


@dataclass(frozen=True, slots=True)
class Held:
    """An audit waiting to run that no attempt may claim: its batch's budget, or its
    tenant's, is spent."""

    budget: Literal["batch", "tenant"]
    tenant: str
    batch_id: UUID | None


async def held_by(conn: Statements, *, audit_id: UUID) -> Held | None:
    """Why a claim of this audit found nothing although it waits to run; None when it
    does not wait (finished, cancelled, running, or a budget was raised meanwhile)."""
    record = await conn.fetchrow(_HELD_BY, audit_id)
    if record is None or record["budget"] is None:
        return None
    return Held(**record)


async def cancel_queued_of_batch(
    conn: Statements, batch_id: UUID, *, code: str, message: str
) -> list[UUID]:
    """End the batch's queued audits as cancelled with this error; their ids."""
    records = await conn.fetch(_CANCEL_QUEUED_OF_BATCH, batch_id, code, message)
    return [record["id"] for record in records]


async def status_left_by(conn: Statements, *, audit_id: UUID, attempt: int) -> AuditStatus | None:
    """The status `attempt` left the audit in, if it was the last attempt and has ended.

    For a fenced write retried after its connection broke: the first try may have
    committed. No other writer ends a live attempt (the reconciler waits for its lease
    to run out; a cancel leaves `cancelled`), so a match is that first try.
    """
    status = await conn.fetchval(_STATUS_LEFT_BY, audit_id, attempt)
    return None if status is None else AuditStatus(status)


# --- Fleet figures (GET /metrics) -------------------------------------------------------

# Each served by an index on `status` (and `tenant`): they read the queued and running
# audits, never the whole table. A tenant's budget is looked at once per tenant.
_QUEUED = (
    f"SELECT priority, tenant, queued, oldest, {spend.over_budget('queue.tenant')} AS held "
    "FROM (SELECT priority, tenant, count(*) AS queued, min(created_at) AS oldest "
    f"FROM audit WHERE status = {Q} GROUP BY priority, tenant) AS queue"
)
_RUNNING = f"SELECT count(*) FROM audit WHERE status = {R}"
_BATCHES_RUNNING = (
    "SELECT count(DISTINCT batch_id) FROM audit "
    f"WHERE status IN {sql_list(UNFINISHED)} AND batch_id IS NOT NULL"
)


@dataclass(frozen=True, slots=True)
class Fleet:
    """What the whole deployment's audits look like now.

    `held_tenants` have spent their monthly budget: their queued audits wait for it to
    reset or be raised. They are in `queued` (they are queued), not in `oldest_queued_at`,
    the oldest audit a worker could start: a held one would age for the rest of the month
    and keep asking for workers that could do nothing with it.
    """

    queued: dict[tuple[Priority, str], int]  # by (priority, tenant)
    oldest_queued_at: dict[Priority, datetime]
    held_tenants: frozenset[str]
    running: int
    batches_running: int


async def fleet(conn: Statements) -> Fleet:
    queues = await conn.fetch(_QUEUED)
    oldest: dict[Priority, datetime] = {}
    for queue in queues:
        priority = Priority(queue["priority"])
        if not queue["held"] and (priority not in oldest or queue["oldest"] < oldest[priority]):
            oldest[priority] = queue["oldest"]
    return Fleet(
        queued={(Priority(q["priority"]), q["tenant"]): q["queued"] for q in queues},
        oldest_queued_at=oldest,
        held_tenants=frozenset(q["tenant"] for q in queues if q["held"]),
        running=await conn.fetchval(_RUNNING),
        batches_running=await conn.fetchval(_BATCHES_RUNNING),
    )


# --- The fleet's recent work (GET /api/v1/status) -------------------------------------

# Through `ix_audit_finished` (`finished_at`, partial on the terminal statuses): what
# finished in the window, never the whole table. Bars are whole minutes of the clock, so
# that a chart redrawn every few seconds keeps each bar where it was.
_CLOCK = "SELECT now()"
_FINISHED_BY_MINUTE = (
    # The minute by the epoch, not `date_trunc`: the same minute whatever the session's zone.
    "SELECT to_timestamp(floor(extract(epoch FROM finished_at) / 60) * 60) AS minute, "
    "status, error_code, "
    "count(*) AS count, count(*) FILTER (WHERE finished_at > $2) AS recent "
    f"FROM audit WHERE status IN {sql_list(TERMINAL)} AND finished_at >= $1 GROUP BY 1, 2, 3"
)
# The latest failures, for links to them: the index read backwards, stopping at `$2`.
_LATEST_FAILURES = (
    "SELECT id, tenant, subject, error_code, finished_at FROM audit "
    f"WHERE status IN {sql_list(TERMINAL)} AND status = {F} AND finished_at >= $1 "
    "ORDER BY finished_at DESC, id DESC LIMIT $2"
)
# Through `ix_audit_unfinished`, like `_BATCHES_RUNNING`: the batches running longest first.
_UNFINISHED_BATCHES = (
    f"SELECT batch_id FROM audit WHERE status IN {sql_list(UNFINISHED)} "
    "AND batch_id IS NOT NULL GROUP BY batch_id ORDER BY min(created_at), batch_id LIMIT $1"
)


@dataclass(frozen=True, slots=True)
class FinishedTally:
    """The audits that ended in one minute of the clock with one status and error code."""

    minute: datetime
    status: AuditStatus
    error_code: str | None
    count: int
    recent: int  # of `count`, those that ended after the `recent` moment


@dataclass(frozen=True, slots=True)
class Failure:
    """A failed audit, as a list of recent failures links to it."""

    id: UUID
    tenant: str
    subject: str
    error_code: str | None
    finished_at: datetime


async def clock(conn: Statements) -> datetime:
    """PostgreSQL's `now()`: the clock the windows below are measured on."""
    now: datetime = await conn.fetchval(_CLOCK)
    return now


async def finished_by_minute(
    conn: Statements, *, since: datetime, recent: datetime
) -> list[FinishedTally]:
    """What ended from `since` on, by minute of the clock, status and error code;
    `recent` counts, of each, what ended after `recent`."""
    records = await conn.fetch(_FINISHED_BY_MINUTE, since, recent)
    return [FinishedTally(**{**r, "status": AuditStatus(r["status"])}) for r in records]


async def latest_failures(conn: Statements, *, since: datetime, limit: int) -> list[Failure]:
    """The `limit` latest failed audits that ended from `since` on, newest first."""
    return [Failure(**r) for r in await conn.fetch(_LATEST_FAILURES, since, limit)]


async def unfinished_batch_ids(conn: Statements, *, limit: int) -> list[UUID]:
    """Batches with an audit queued or running, those with the oldest audits first."""
    return [record["batch_id"] for record in await conn.fetch(_UNFINISHED_BATCHES, limit)]


# --- Recovery and retention -------------------------------------------------------------

_RECOVER_EXPIRED_LEASES = _ending(
    f"UPDATE audit SET {_queued_or_failed(code='$1::text', message='$2::text')}, "
    f"lease_until = NULL, updated_at = now() WHERE status = {R} AND {_LEASE_EXPIRED}",
    f"status, {_RUN}, model, created_at",
)
_RUNS_OF = f"SELECT {_RUN} FROM audit WHERE id = ANY($1::uuid[]) AND status = {Q}"
_QUEUED_BEFORE = (
    f"SELECT id, created_at FROM audit WHERE status = {Q} AND updated_at < now() - $1::interval "
    "{after} ORDER BY created_at, id LIMIT $2"
)
_QUEUED_BEFORE_FIRST = _QUEUED_BEFORE.format(after="")
_QUEUED_BEFORE_NEXT = _QUEUED_BEFORE.format(after="AND (created_at, id) > ($3, $4)")
_DELETE_FINISHED_BEFORE = (
    "WITH gone AS (DELETE FROM audit WHERE id IN ("
    f"SELECT id FROM audit WHERE status IN {sql_list(TERMINAL)} "
    "AND finished_at < now() - $1::interval LIMIT $2 FOR UPDATE SKIP LOCKED) "
    "RETURNING 1) SELECT count(*) FROM gone"
)


@dataclass(frozen=True, slots=True)
class LostAudit:
    """An audit failed because the worker running its last attempt stopped."""

    run: QueuedRun
    model: str
    created_at: datetime


@dataclass(frozen=True, slots=True)
class RecoveredLeases:
    requeued: list[QueuedRun]
    failed: list[LostAudit]


async def recover_expired_leases(conn: Statements, *, code: str, message: str) -> RecoveredLeases:
    """Running audits whose lease ran out: back to queued, or failed on their last attempt."""
    recovered = RecoveredLeases(requeued=[], failed=[])
    for record in await conn.fetch(_RECOVER_EXPIRED_LEASES, code, message):
        run = _queued_run(record)
        if record["status"] == AuditStatus.QUEUED:
            recovered.requeued.append(run)
        else:
            recovered.failed.append(LostAudit(run, record["model"], record["created_at"]))
    return recovered


async def queued_runs(conn: Statements, audit_ids: Sequence[UUID]) -> list[QueuedRun]:
    """The runs to queue for those of these audits that are still queued."""
    return [_queued_run(record) for record in await conn.fetch(_RUNS_OF, list(audit_ids))]


async def queued_before(
    conn: Statements, *, age: timedelta, limit: int, after: Keyset | None = None
) -> list[Keyset]:
    """Queued audits untouched for `age`, oldest first after `after`, as (created_at, id).

    A caller walks a backlog of any size a page at a time (the status index serves it).
    """
    if after is None:
        records = await conn.fetch(_QUEUED_BEFORE_FIRST, age, limit)
    else:
        records = await conn.fetch(_QUEUED_BEFORE_NEXT, age, limit, *after)
    return [(record["created_at"], record["id"]) for record in records]


async def delete_finished_before(conn: Statements, *, age: timedelta, chunk: int) -> int:
    """Delete up to `chunk` audits that ended more than `age` ago; how many went.

    Rows another transaction holds are skipped, so a clean-up never blocks the API or a
    worker's fenced write.
    """
    deleted: int = await conn.fetchval(_DELETE_FINISHED_BEFORE, age, chunk)
    return deleted
