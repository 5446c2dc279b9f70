"""The outbox: every terminal state writes its events in its own transaction, exactly the
events the contract names, and a batch's end exactly once, however its audits race."""

import asyncio
import json
from functools import partial
from typing import Any
from uuid import UUID

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits import recovery
from shared.audits import service as audits
from shared.audits.runs import AttemptOutcome, Failed, Succeeded, run_attempt
from shared.audits.views import to_read
from shared.batches import service as batches
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope
from shared.db import statement_connection as connect_to
from shared.webhooks import outbox
from shared.webhooks.payloads import audit_body
from shared.webhooks.repository import EventRow
from shared.webhooks.vocabulary import EventType
from tests.fixtures.polling import eventually
from tests.rows import expire_lease, update_audit
from tests.shared.audits.test_runs import (
    LEASE,
    PRICES,
    FakeAdmission,
    FakeClock,
    FakeModel,
    permanent,
)
from tests.shared.webhooks.support import (
    audit_with_callback,
    batch_with_callback,
    cancel,
    events_of,
)

pytestmark = pytest.mark.usefixtures("clean")

URL = "https://hooks.example.com/auditq"


@pytest.fixture
def run(engine: AsyncEngine) -> Any:
    """Run an attempt of the audit against PostgreSQL, the model faked."""

    async def run(audit_id: UUID, model: FakeModel | None = None) -> AttemptOutcome:
        return await run_attempt(
            audit_id,
            connect=partial(connect_to, engine),
            lease=LEASE,
            admission=FakeAdmission(),
            ask_model=model or FakeModel(),
            clock=FakeClock().clock(),
            prices=PRICES,
        )

    return run


def payload(event: EventRow) -> dict[str, Any]:
    """The event's body as its first try will send it."""
    if event.payload is not None:
        parsed: dict[str, Any] = json.loads(event.payload)
        return parsed
    assert event.snapshot is not None
    rendered: dict[str, Any] = json.loads(
        audit_body(event.type, timestamp=event.created_at, snapshot=event.snapshot)
    )
    return rendered


def kinds(rows: list[EventRow]) -> list[str]:
    return [str(row.type) for row in rows]


async def test_an_audit_that_succeeds_sends_itself_as_get_shows_it_then(
    engine: AsyncEngine, run: Any
) -> None:
    audit = await audit_with_callback(engine, URL)

    assert isinstance(await run(audit.id), Succeeded)

    (event,) = await events_of(engine, audit_id=audit.id)
    async with connect_to(engine) as conn:
        now = await audits.get_or_raise(conn, audit_id=audit.id, tenant=None)
    assert (event.type, event.url, event.tenant) == (EventType.AUDIT_SUCCEEDED, URL, "default")
    body = payload(event)
    assert body["type"] == "audit.succeeded"
    assert body["data"] == json.loads(to_read(now).model_dump_json())  # no content
    assert body["data"]["result"]["verdict"] == "pass"
    assert body["timestamp"] >= body["data"]["finished_at"]


async def test_an_audit_that_fails_sends_audit_failed_only_when_it_ends(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    failing = await audit_with_callback(engine, URL)
    assert isinstance(await run(failing.id, FakeModel(permanent())), Failed)

    assert kinds(await events_of(engine, audit_id=failing.id)) == ["audit.failed"]
    assert payload((await events_of(engine, audit_id=failing.id))[0])["data"]["error"] == {
        "code": "model_refused",
        "message": "the model refused",
    }


async def test_an_audit_without_a_callback_sends_nothing(engine: AsyncEngine, run: Any) -> None:
    finished = await audit_with_callback(engine, None)
    cancelled = await audit_with_callback(engine, None)

    await run(finished.id)
    await cancel(engine, cancelled.id)

    assert await events_of(engine, audit_id=finished.id) == []
    assert await events_of(engine, audit_id=cancelled.id) == []


async def test_a_cancelled_audit_sends_audit_cancelled(engine: AsyncEngine) -> None:
    audit = await audit_with_callback(engine, URL)

    await cancel(engine, audit.id)

    (event,) = await events_of(engine, audit_id=audit.id)
    assert payload(event)["type"] == "audit.cancelled"
    assert payload(event)["data"]["status"] == "cancelled"


async def test_the_end_and_its_events_commit_together_or_not_at_all(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last audit of a batch: its finish, its event and its batch's, in one transaction."""
    batch = await batch_with_callback(session_factory, 1, URL, item_events=True)
    (audit_id,) = await audit_ids(engine, batch.batch.id)

    async def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the outbox failed")

    monkeypatch.setattr(outbox, "batches_may_have_ended", broken)
    with pytest.raises(RuntimeError, match="the outbox failed"):
        await run(audit_id)

    async with connect_to(engine) as conn:
        now = await audits.get_or_raise(conn, audit_id=audit_id, tenant=None)
    assert now.status == "running"  # the finish was rolled back with its events
    assert await events_of(engine, audit_id=audit_id) == []
    assert await events_of(engine, batch_id=batch.batch.id) == []


async def test_the_reconciler_failing_an_abandoned_audit_sends_audit_failed(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    audit = await audit_with_callback(engine, URL)
    await update_audit(session_factory, audit.id, status="running", attempts=5, attempt_limit=5)
    await expire_lease(session_factory, audit.id)

    async with session_scope(session_factory) as session:
        _, failed = await recovery.recover_expired_leases(SessionStatements(session))

    assert [lost.run.audit_id for lost in failed] == [audit.id]
    (event,) = await events_of(engine, audit_id=audit.id)
    assert payload(event)["data"]["error"]["code"] == "worker_lost"


# Batches


async def test_a_batch_sends_batch_completed_when_its_last_audit_ends_and_its_audits_nothing(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    batch = await batch_with_callback(session_factory, 3, URL)
    ids = await audit_ids(engine, batch.batch.id)

    for audit_id in ids[:2]:
        await run(audit_id)
        assert await events_of(engine, batch_id=batch.batch.id) == []
    await run(ids[2], FakeModel(permanent()))

    (event,) = await events_of(engine, batch_id=batch.batch.id)
    body = payload(event)
    assert body["type"] == "batch.completed"
    assert body["data"]["status"] == "completed"
    assert body["data"]["counts"] | {"total": 3} == {
        "queued": 0, "running": 0, "succeeded": 2, "failed": 1, "cancelled": 0, "total": 3
    }  # fmt: skip
    for audit_id in ids:
        assert await events_of(engine, audit_id=audit_id) == []  # no item_events


async def audit_ids(engine: AsyncEngine, batch_id: UUID) -> list[UUID]:
    async with connect_to(engine) as conn:
        rows = await conn.fetch(
            "SELECT id FROM audit WHERE batch_id = $1 ORDER BY batch_index", batch_id
        )
    return [row["id"] for row in rows]


async def test_with_item_events_each_audit_sends_its_own_event_too(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    batch = await batch_with_callback(session_factory, 2, URL, item_events=True)
    ids = await audit_ids(engine, batch.batch.id)

    await run(ids[0])
    await cancel(engine, ids[1])

    assert kinds(await events_of(engine, audit_id=ids[0])) == ["audit.succeeded"]
    assert kinds(await events_of(engine, audit_id=ids[1])) == ["audit.cancelled"]
    assert kinds(await events_of(engine, batch_id=batch.batch.id)) == ["batch.completed"]


@pytest.mark.parametrize("round_", range(3))
async def test_audits_ending_together_send_their_batch_s_end_exactly_once(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any, round_: int
) -> None:
    batch = await batch_with_callback(session_factory, 12, URL)
    ids = await audit_ids(engine, batch.batch.id)
    model = FakeModel(held=True)
    attempts = [asyncio.create_task(run(audit_id, model)) for audit_id in ids]

    async def calls() -> int:
        return model.calls

    await eventually(calls, lambda n: n == len(ids))  # all claimed, waiting for their answer

    model.release()  # twelve fenced finishes at once, on five pooled connections
    await asyncio.gather(*attempts)

    (event,) = await events_of(engine, batch_id=batch.batch.id)
    assert payload(event)["data"]["counts"]["succeeded"] == 12


async def test_cancelling_a_batch_sends_batch_cancelled_and_with_item_events_its_audits(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    batch = await batch_with_callback(session_factory, 3, URL, item_events=True)
    ids = await audit_ids(engine, batch.batch.id)
    await run(ids[0])

    async with session_scope(session_factory) as session:
        await batches.cancel(SessionStatements(session), batch=batch.batch)

    assert kinds(await events_of(engine, batch_id=batch.batch.id)) == ["batch.cancelled"]
    assert [kinds(await events_of(engine, audit_id=i)) for i in ids] == [
        ["audit.succeeded"],
        ["audit.cancelled"],
        ["audit.cancelled"],
    ]
    (event,) = await events_of(engine, batch_id=batch.batch.id)
    assert payload(event)["data"]["status"] == "cancelled"


async def test_a_batch_stopped_on_its_budget_sends_batch_cancelled_and_its_audits_theirs(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    batch = await batch_with_callback(session_factory, 2, URL, item_events=True)
    ids = await audit_ids(engine, batch.batch.id)
    async with engine.begin() as connection:  # a budget already spent
        await connection.exec_driver_sql(
            "UPDATE batch SET max_cost_usd = 1, spent_usd = 1 WHERE id = $1", (batch.batch.id,)
        )

    await run(ids[0])

    assert [kinds(await events_of(engine, audit_id=i)) for i in ids] == [["audit.cancelled"]] * 2
    (event,) = await events_of(engine, batch_id=batch.batch.id)
    data = payload(event)["data"]
    assert (event.type, data["status"]) == ("batch.cancelled", "cancelled")
    assert data["budget_exhausted_at"] is not None
    assert payload((await events_of(engine, audit_id=ids[0]))[0])["data"]["error"] == {
        "code": "budget_exhausted",
        "message": "not run: its batch spent its budget (max_cost_usd) before it started",
    }


async def test_a_batch_retried_after_it_ended_sends_its_end_again(
    engine: AsyncEngine, session_factory: SessionFactory, run: Any
) -> None:
    batch = await batch_with_callback(session_factory, 1, URL)
    (audit_id,) = await audit_ids(engine, batch.batch.id)
    await run(audit_id, FakeModel(permanent()))

    async def no_quota(tenant: str) -> None:
        return None

    async with session_scope(session_factory) as session:
        await audits.retry(
            SessionStatements(session),
            audit_id=audit_id,
            tenant=None,
            settings=Settings(),
            quota=no_quota,
        )
    await run(audit_id)

    sent = await events_of(engine, batch_id=batch.batch.id)
    assert kinds(sent) == ["batch.completed", "batch.completed"]
    assert [payload(e)["data"]["counts"]["failed"] for e in sent] == [1, 0]
