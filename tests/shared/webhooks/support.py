"""Audits and batches that end with events, and a deliverer running in the test's loop."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any
from uuid import UUID

from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits import service as audits
from shared.audits.repository import AuditRow
from shared.audits.schemas import AuditCreate
from shared.batches import service as batches
from shared.batches.schemas import BatchCreate
from shared.batches.summary import BatchSummary
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope, statement_connection
from shared.queue import discard_pending
from shared.tenants.caller import DEFAULT_TENANT
from shared.webhooks import repository as events
from shared.webhooks.addresses import CallbackPolicy
from shared.webhooks.delivery import Deliverer, SigningKeys
from shared.webhooks.repository import AttemptRow, EventRow
from shared.webhooks.sending import Sender
from shared.webhooks.signing import new_secret
from tests.factories import audit_request, batch_request

SECRET = new_secret()
SETTINGS = Settings()


async def audit_with_callback(
    engine: AsyncEngine, url: str | None, *, tenant: str = DEFAULT_TENANT
) -> AuditRow:
    """A queued audit that sends its events to `url` (its job is not sent)."""
    data = AuditCreate.model_validate(audit_request(callback_url=url))
    async with statement_connection(engine) as conn:
        created = await audits.create(conn, data=data, tenant=tenant, settings=SETTINGS)
        discard_pending(conn)
    return created.resource


async def batch_with_callback(
    factory: SessionFactory, size: int, url: str | None, **fields: Any
) -> BatchSummary:
    """A batch of `size` queued audits that sends its events to `url`."""
    data = BatchCreate.model_validate(batch_request(size, callback_url=url, **fields))
    async with session_scope(factory) as session:
        conn = SessionStatements(session)
        created = await batches.create(conn, data=data, tenant=DEFAULT_TENANT, settings=SETTINGS)
        discard_pending(conn)
    return created.resource


async def cancel(engine: AsyncEngine, audit_id: UUID) -> AuditRow:
    """Cancel the audit as the API does: its events are written with it."""
    async with statement_connection(engine) as conn, conn.transaction():
        cancelled = await audits.cancel(conn, audit_id=audit_id, tenant=None)
        discard_pending(conn)
    return cancelled


async def events_of(
    engine: AsyncEngine, *, audit_id: UUID | None = None, batch_id: UUID | None = None
) -> list[EventRow]:
    """The audit's (or the batch's) events, oldest first."""
    async with statement_connection(engine) as conn:
        rows = await events.page(conn, audit_id=audit_id, batch_id=batch_id, limit=1000, after=None)
    return rows[::-1]


async def attempts_of(engine: AsyncEngine, event_id: UUID) -> list[AttemptRow]:
    async with statement_connection(engine) as conn:
        return await events.attempts_of(conn, [event_id])


@asynccontextmanager
async def delivering(
    engine: AsyncEngine,
    *,
    secret: str | None = SECRET,
    policy: CallbackPolicy | None = None,
    backoff: float = 0.05,
    lease: timedelta = timedelta(seconds=30),
    max_age: timedelta = timedelta(hours=1),
    timeout_s: float = 5.0,
    concurrency: int = 8,
) -> AsyncIterator[Deliverer]:
    """A deliverer running until the block ends, retrying after `backoff` seconds."""
    sender = Sender(
        policy or CallbackPolicy(allow_private=True), concurrency=concurrency, timeout_s=timeout_s
    )
    deliverer = Deliverer(
        engine,
        sender,
        SigningKeys(engine, None if secret is None else SecretStr(secret)),
        max_age=max_age,
        concurrency=concurrency,
        lease=lease,
        backoff=lambda tries: backoff,
    )
    task = asyncio.create_task(deliverer.run())
    try:
        yield deliverer
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await sender.close()
