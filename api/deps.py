"""Request dependencies: the transaction of a request, and loading resources by id."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any
from uuid import UUID

from arq.connections import ArqRedis
from fastapi import Depends, FastAPI, Header, Query, Request, Response

from api.auth import authenticate
from shared.audits import service as audits
from shared.audits.repository import AuditRow
from shared.batches import service as batches
from shared.batches.repository import BatchRow
from shared.config import Settings
from shared.db import SessionStatements, StatementConnection, Statements
from shared.idempotency import MAX_KEY_LENGTH, Created
from shared.pagination import MAX_LIMIT
from shared.queue import discard_pending, send_pending, transaction
from shared.queue import statements as queue_statements
from shared.spend.prices import PriceTable
from shared.tenants.caller import TENANT_NAME, Caller
from shared.tenants.directory import Directory, TenantLimits
from shared.tenants.quotas import QuotaOf, SubmitRate
from shared.webhooks import callbacks
from shared.webhooks.addresses import CallbackPolicy


# The dependencies below that do no I/O are `async def` all the same: FastAPI runs a
# plain `def` dependency in its thread pool, a thread hop on every request.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_redis(request: Request) -> ArqRedis:
    redis: ArqRedis = request.app.state.redis
    return redis


async def get_transaction(request: Request) -> AsyncIterator[SessionStatements]:
    """The request's transaction: committed when the route returns, then its jobs are sent.

    `scope="function"` (below) runs this exit before the response is sent, so a
    client that gets 202 can read its audit at once, and a failed commit is an
    error response rather than a lie.
    """
    async with request.app.state.session_factory() as session:
        try:
            yield SessionStatements(session)
            await session.commit()
        except BaseException:
            discard_pending(session)
            raise
    await send_pending(session, get_redis(request))


def statements(request: Request) -> AbstractAsyncContextManager[StatementConnection]:
    """A statement connection for a hot route, which opens it itself; its jobs sent after.

    Not a dependency: FastAPI's machinery for generator dependencies cost a tenth of
    these requests' CPU.
    """
    return queue_statements(request.app.state.engine, get_redis(request))


async def get_cursor_key(request: Request) -> bytes:
    """The key that signs this process's cursors (shared/secret.py)."""
    key: bytes = request.app.state.cursor_key
    return key


async def get_request_id(request: Request) -> str | None:
    request_id: str | None = request.state.request_id
    return request_id


SettingsDep = Annotated[Settings, Depends(get_settings)]
TenantFilter = Annotated[
    str | None,
    Query(
        pattern=TENANT_NAME.pattern,
        description="Admin keys: only this tenant's. A member key always sees its own.",
    ),
]
Transaction = Annotated[SessionStatements, Depends(get_transaction, scope="function")]
RequestId = Annotated[str | None, Depends(get_request_id)]
CursorKey = Annotated[bytes, Depends(get_cursor_key)]
# A list's page: how many items, and the `next_cursor` of the page before.
PageLimit = Annotated[int, Query(ge=1, le=MAX_LIMIT)]
PageCursor = Annotated[str | None, Query(max_length=512)]
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=MAX_KEY_LENGTH,
        description="Repeat a request safely: the same key and body return the first result.",
    ),
]


def set_location(
    request: Request, response: Response, route: str, *, query: str = "", **params: Any
) -> None:
    """`Location` of a resource, as the router spells the path of `route`."""
    path = _path_template(request.app, route, tuple(params)).format_map(params)
    response.headers["Location"] = f"{path}?{query}" if query else path


def _path_template(app: FastAPI, route: str, names: tuple[str, ...]) -> str:
    """The path of `route` with `{name}` placeholders, asked of the router once per app.

    `url_path_for` walks every route: ~60 µs, the most expensive step of a submit.
    """
    templates: dict[tuple[str, tuple[str, ...]], str] = app.state.path_templates
    key = (route, names)
    if key not in templates:
        templates[key] = app.url_path_for(route, **{name: f"{{{name}}}" for name in names})
    return templates[key]


def mark_created(
    request: Request, response: Response, created: Created[Any], *, route: str, **params: Any
) -> None:
    """`Location` of the resource, and whether it came from an earlier request."""
    set_location(request, response, route, **params)
    if created.replayed:
        response.headers["Idempotent-Replayed"] = "true"


@asynccontextmanager
async def tenant_gate(request: Request, tenant: str, limits: TenantLimits) -> AsyncIterator[None]:
    """One counted submission of a tenant at a time in this process, before it takes a
    pooled connection.

    Counted submissions of a tenant wait for each other on a lock in PostgreSQL, each
    holding a connection of the pool meanwhile: a burst of one tenant's submits would
    take the connections every tenant's requests need. Waiting here holds none.
    """
    if limits.max_queued is None:
        yield
        return
    gates: dict[str, asyncio.Lock] = request.app.state.tenant_gates
    async with gates.setdefault(tenant, asyncio.Lock()):
        yield


@asynccontextmanager
async def _counted_transaction(
    request: Request, tenant: str, limits: TenantLimits
) -> AsyncIterator[SessionStatements]:
    factory = request.app.state.session_factory
    async with (
        tenant_gate(request, tenant, limits),
        transaction(factory, get_redis(request)) as session,
    ):
        yield SessionStatements(session)


def submission(
    request: Request, tenant: str, limits: TenantLimits
) -> AbstractAsyncContextManager[Statements]:
    """The handle of a submit: a statement connection, or, where the tenant's queued
    audits are counted, a transaction that the count and the insert share."""
    if limits.max_queued is None:
        return statements(request)
    return _counted_transaction(request, tenant, limits)


@dataclass(frozen=True, slots=True)
class Submitter:
    """Who submits, and with which settings: one dependency where a submit had two."""

    caller: Caller
    settings: Settings
    prices: PriceTable


async def tenant_limits(request: Request, caller: Caller) -> TenantLimits:
    """The caller's tenant's quotas, after counting this submission against its rate.

    Called by the route, once its body is valid: a malformed request counts for nothing,
    one the service then refuses (an unknown rubric, the quota) counts all the same.
    """
    directory: Directory = request.app.state.directory
    limits = await directory.limits(caller.tenant)
    submit_rate: SubmitRate = request.app.state.submit_rate
    await submit_rate.take(caller.tenant, per_minute=limits.submit_rpm)
    return limits


async def check_callback(
    request: Request, url: str | None, caller: Caller, limits: TenantLimits
) -> None:
    """Refuse a `callback_url` the deployment would not call or could not sign for."""
    policy: CallbackPolicy = request.app.state.callback_policy
    await callbacks.check(url, policy=policy, can_sign=limits.signs_webhooks, tenant=caller.tenant)


def quota_of(request: Request) -> QuotaOf:
    """A tenant's `max_queued`, from this process's directory."""
    directory: Directory = request.app.state.directory

    async def max_queued(tenant: str) -> int | None:
        return (await directory.limits(tenant)).max_queued

    return max_queued


# The dependencies below call `authenticate` rather than declare it: each dependency
# FastAPI resolves costs a submit or a read ~25 µs (bench/RESULTS.md, "Tuning").
async def get_submitter(request: Request) -> Submitter:
    state = request.app.state
    return Submitter(await authenticate(request), state.settings, state.prices)


# Plain `async def`s, each on a statement connection of its own, closed before the
# route runs: loading a resource is one statement. Another tenant's is not found.
async def get_audit_or_404(audit_id: UUID, request: Request) -> AuditRow:
    caller = await authenticate(request)
    async with statements(request) as conn:
        return await audits.get_or_raise(conn, audit_id=audit_id, tenant=caller.scope)


async def get_batch_or_404(batch_id: UUID, request: Request) -> BatchRow:
    caller = await authenticate(request)
    async with statements(request) as conn:
        return await batches.get_or_raise(conn, batch_id=batch_id, tenant=caller.scope)


CurrentSubmitter = Annotated[Submitter, Depends(get_submitter)]
CurrentAudit = Annotated[AuditRow, Depends(get_audit_or_404)]
CurrentBatch = Annotated[BatchRow, Depends(get_batch_or_404)]
