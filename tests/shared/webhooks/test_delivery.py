"""The deliverer against a real receiver on loopback: signed, at least once, the same id on
every retry, 410 and expiry honoured, no redirect followed, no private host reached."""

import asyncio
from datetime import UTC, datetime, timedelta, tzinfo
from ipaddress import ip_address
from uuid import UUID, uuid4

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import statement_connection
from shared.tenants import repository as tenants
from shared.webhooks import callbacks, delivery
from shared.webhooks import repository as events
from shared.webhooks.addresses import CallbackPolicy, IPAddress
from shared.webhooks.delivery import UNRENDERABLE, next_state, retry_delay
from shared.webhooks.repository import AttemptRow, ClaimedEvent
from shared.webhooks.sending import TryOutcome
from shared.webhooks.signing import new_secret
from shared.webhooks.vocabulary import DeliveryStatus, EventType
from tests.fixtures.polling import eventually
from tests.fixtures.receiver import always, receiving
from tests.shared.webhooks.support import (
    SECRET,
    attempts_of,
    audit_with_callback,
    cancel,
    delivering,
    events_of,
)

pytestmark = pytest.mark.usefixtures("clean")


async def cancelled_with_callback(engine: AsyncEngine, url: str) -> UUID:
    """An audit cancelled with a callback: one `audit.cancelled` event waits. Its id."""
    audit = await audit_with_callback(engine, url)
    await cancel(engine, audit.id)
    return audit.id


async def settled(engine: AsyncEngine, audit_id: UUID) -> DeliveryStatus:
    """Where the audit's one event stands once it is no longer pending."""

    async def status() -> DeliveryStatus:
        (event,) = await events_of(engine, audit_id=audit_id)
        return event.status

    return await eventually(status, lambda s: s is not DeliveryStatus.PENDING)


async def test_an_event_is_delivered_once_signed_with_the_resource_without_content(
    engine: AsyncEngine,
) -> None:
    async with receiving() as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine):
            (delivered,) = (await receiver.until_delivered(1)).values()
            # Recorded once the answer is read: the deliverer must still run meanwhile.
            assert await settled(engine, audit_id) is DeliveryStatus.DELIVERED
    payload = delivered.verified(SECRET)
    assert set(payload) == {"type", "timestamp", "data"}
    assert payload["type"] == "audit.cancelled"
    assert payload["data"]["id"] == str(audit_id)
    assert payload["data"]["status"] == "cancelled"
    assert "content" not in payload["data"]
    assert delivered.path == "/hooks"
    assert delivered.headers["content-type"] == "application/json"
    (event,) = await events_of(engine, audit_id=audit_id)
    assert delivered.webhook_id == str(event.id)
    (attempt,) = await attempts_of(engine, event.id)
    assert (attempt.number, attempt.status_code, attempt.error) == (1, 204, None)
    assert event.next_attempt_at is None
    assert event.settled_at is not None


async def test_a_receiver_failing_the_first_tries_gets_the_same_id_until_it_answers(
    engine: AsyncEngine,
) -> None:
    failures = [500, 503, 429]

    def answer(webhook_id: str, nth: int) -> int:
        return failures[nth - 1] if nth <= len(failures) else 200

    async with receiving(answer) as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine):
            await receiver.until_delivered(1)
            assert await settled(engine, audit_id) is DeliveryStatus.DELIVERED

    assert [t.status for t in receiver.tries] == [500, 503, 429, 200]
    assert len({t.webhook_id for t in receiver.tries}) == 1
    assert len({t.body for t in receiver.tries}) == 1  # the same event, byte for byte
    for attempt in receiver.tries:  # each try signed afresh, each signature valid
        attempt.verified(SECRET)
    (event,) = await events_of(engine, audit_id=audit_id)
    tries = await attempts_of(engine, event.id)
    assert [(a.number, a.status_code) for a in tries] == [(1, 500), (2, 503), (3, 429), (4, 200)]


async def test_410_means_gone_and_no_more_tries(engine: AsyncEngine) -> None:
    async with receiving(always(410)) as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine):
            assert await settled(engine, audit_id) is DeliveryStatus.GONE
            await asyncio.sleep(0.3)  # backoff is 0.05 s: a retry would have come by now

    assert [t.status for t in receiver.tries] == [410]
    (event,) = await events_of(engine, audit_id=audit_id)
    assert event.next_attempt_at is None


async def test_an_event_without_a_2xx_within_the_maximum_age_expires(engine: AsyncEngine) -> None:
    async with receiving(always(500)) as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine, backoff=0.1, max_age=timedelta(seconds=0.5)):
            assert await settled(engine, audit_id) is DeliveryStatus.EXPIRED

    assert 2 <= len(receiver.tries) <= 7
    (event,) = await events_of(engine, audit_id=audit_id)
    assert len(await attempts_of(engine, event.id)) == len(receiver.tries)


class DayAhead(datetime):
    """The wall clock of a worker whose host is a day ahead of PostgreSQL's."""

    @classmethod
    def now(cls, tz: tzinfo | None = None) -> "DayAhead":
        ahead = datetime.now(tz) + timedelta(days=1)
        return cls.fromtimestamp(ahead.timestamp(), tz)


async def test_a_worker_whose_clock_is_off_times_its_tries_on_postgresql_clock(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delivery, "datetime", DayAhead)
    async with receiving(always(500)) as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        (event,) = await events_of(engine, audit_id=audit_id)

        async def tries() -> list[AttemptRow]:
            return await attempts_of(engine, event.id)

        async with delivering(engine, backoff=60):
            (attempt,) = await eventually(tries, lambda found: len(found) > 0)
    (event,) = await events_of(engine, audit_id=audit_id)

    # On PostgreSQL's clock, as the event's creation and the claim of due events are: the
    # next try comes a minute after this one, not a day and a minute.
    assert timedelta(0) <= attempt.started_at - event.created_at < timedelta(seconds=30)
    assert event.next_attempt_at is not None
    assert (
        timedelta(seconds=60) <= event.next_attempt_at - attempt.started_at < timedelta(seconds=70)
    )


async def rewrite_snapshot(engine: AsyncEngine, audit_id: UUID, change: str) -> None:
    """Change the row the audit's event keeps, as another version of auditq might have
    written it: `change` is SQL of `snapshot`."""
    async with statement_connection(engine) as conn:
        await conn.execute(
            f"UPDATE webhook_event SET snapshot = {change} WHERE audit_id = $1", audit_id
        )


async def test_a_row_from_another_version_is_sent_with_the_columns_this_one_knows(
    engine: AsyncEngine,
) -> None:
    async with receiving() as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        # A column added since, and a nullable one not yet there.
        changed = "(snapshot - 'rerun_of') || '{\"added_later\": 1}'"
        await rewrite_snapshot(engine, audit_id, changed)
        async with delivering(engine):
            (delivered,) = (await receiver.until_delivered(1)).values()

    data = delivered.verified(SECRET)["data"]
    assert (data["id"], data["status"], data["rerun_of"]) == (str(audit_id), "cancelled", None)
    assert "added_later" not in data


async def test_a_row_that_cannot_be_rendered_is_a_failed_try_and_expires(
    engine: AsyncEngine,
) -> None:
    async with receiving() as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        await rewrite_snapshot(engine, audit_id, 'snapshot || \'{"status": "unheard-of"}\'')
        async with delivering(engine, backoff=0.1, max_age=timedelta(seconds=0.5)):
            assert await settled(engine, audit_id) is DeliveryStatus.EXPIRED

    assert receiver.tries == []
    (event,) = await events_of(engine, audit_id=audit_id)
    attempts = await attempts_of(engine, event.id)
    assert attempts
    assert {(a.status_code, a.error) for a in attempts} == {(None, UNRENDERABLE)}


async def test_a_redirect_is_not_followed(engine: AsyncEngine) -> None:
    async with receiving(always(302)) as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine, backoff=60):
            (event,) = await events_of(engine, audit_id=audit_id)
            (attempt,) = await eventually(lambda: attempts_of(engine, event.id), bool)

    assert (attempt.status_code, attempt.error) == (302, "redirect not followed")
    assert [t.path for t in receiver.tries] == ["/hooks"]  # never /redirected


async def test_a_receiver_that_does_not_answer_in_time_is_a_failed_try(
    engine: AsyncEngine,
) -> None:
    async with receiving(delay_s=2.0) as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine, timeout_s=0.3, backoff=60):
            (event,) = await events_of(engine, audit_id=audit_id)
            (attempt,) = await eventually(lambda: attempts_of(engine, event.id), bool)

    assert attempt.status_code is None
    assert attempt.error == "no answer within 0.3 s"
    assert 250 <= attempt.duration_ms < 2000


async def test_a_try_cut_short_is_tried_again_once_its_lease_ends_with_the_same_id(
    engine: AsyncEngine,
) -> None:
    async with receiving() as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        # A worker claims the event, then dies before it can say how the try went.
        async with statement_connection(engine) as conn:
            (lost,) = await events.claim_due(conn, limit=10, lease=timedelta(seconds=0.5))
        async with delivering(engine):
            await asyncio.sleep(0.2)
            assert receiver.tries == []  # leased: nobody else takes it meanwhile
            (delivered,) = (await receiver.until_delivered(1)).values()
            assert await settled(engine, audit_id) is DeliveryStatus.DELIVERED

    assert delivered.webhook_id == str(lost.id)
    (event,) = await events_of(engine, audit_id=audit_id)
    # The second try is numbered 2: the first, cut short, left no record.
    assert [a.number for a in await attempts_of(engine, event.id)] == [2]


async def test_a_host_that_resolves_privately_at_delivery_is_not_called(
    engine: AsyncEngine,
) -> None:
    """DNS rebinding: public when the callback was submitted, loopback when it is sent."""
    answers = iter([[ip_address("93.184.216.34")], [ip_address("127.0.0.1")]])

    async def rebinding(host: str, port: int) -> list[IPAddress]:
        return next(answers)

    policy = CallbackPolicy(allow_private=False, resolve=rebinding)
    async with receiving() as receiver:
        url = f"https://hooks.example.com:{receiver.port}/hooks"
        await callbacks.check(url, policy=policy, can_sign=True, tenant="default")  # at submit
        audit_id = await cancelled_with_callback(engine, url)
        async with delivering(engine, policy=policy, backoff=60):
            (event,) = await events_of(engine, audit_id=audit_id)
            (attempt,) = await eventually(lambda: attempts_of(engine, event.id), bool)

    assert receiver.tries == []
    assert attempt.status_code is None
    assert attempt.error is not None
    assert attempt.error.startswith("callback_url_not_allowed: hooks.example.com (127.0.0.1)")


@pytest.mark.parametrize("host", ["127.0.0.1", "2130706433", "0177.0.0.1", "[::ffff:127.0.0.1]"])
async def test_a_private_literal_address_is_not_called_without_allow_private(
    engine: AsyncEngine, host: str
) -> None:
    async with receiving() as receiver:
        audit_id = await cancelled_with_callback(engine, f"http://{host}:{receiver.port}/hooks")
        async with delivering(engine, policy=CallbackPolicy(allow_private=False), backoff=60):
            (event,) = await events_of(engine, audit_id=audit_id)
            (attempt,) = await eventually(lambda: attempts_of(engine, event.id), bool)

    assert receiver.tries == []
    assert attempt.error is not None
    assert "is a loopback address" in attempt.error


async def test_without_a_secret_nothing_is_sent_unsigned(engine: AsyncEngine) -> None:
    async with receiving() as receiver:
        audit_id = await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine, secret=None, backoff=60):
            (event,) = await events_of(engine, audit_id=audit_id)
            (attempt,) = await eventually(lambda: attempts_of(engine, event.id), bool)

    assert receiver.tries == []
    assert attempt.error == "no webhook secret for this tenant: nothing was sent"
    (event,) = await events_of(engine, audit_id=audit_id)
    assert event.status is DeliveryStatus.PENDING  # tried again: ops may set one


async def test_a_tenant_secret_signs_instead_of_webhook_secret(engine: AsyncEngine) -> None:
    own = new_secret()
    async with statement_connection(engine) as conn, conn.transaction():
        await tenants.update_tenant(conn, "acme", {"webhook_secret": own})
    async with receiving() as receiver:
        audit = await audit_with_callback(engine, receiver.url(), tenant="acme")
        await cancel(engine, audit.id)
        async with delivering(engine):
            (delivered,) = (await receiver.until_delivered(1)).values()

    assert delivered.verified(own)["data"]["tenant"] == "acme"


async def test_tries_are_bounded_by_the_concurrency(engine: AsyncEngine) -> None:
    async with receiving(delay_s=0.1) as receiver:
        for _ in range(8):
            await cancelled_with_callback(engine, receiver.url())
        async with delivering(engine, concurrency=2):
            await receiver.until_delivered(8)

    assert receiver.most_at_once == 2


def test_backoff_doubles_from_2_s_up_to_an_hour_with_jitter() -> None:
    assert [retry_delay(n, draw=lambda: 1.0) for n in (1, 2, 3, 4)] == [2.0, 4.0, 8.0, 16.0]
    assert retry_delay(1, draw=lambda: 0.0) == 1.0
    assert retry_delay(30, draw=lambda: 1.0) == 3600.0
    assert retry_delay(10_000, draw=lambda: 1.0) == 3600.0


@pytest.mark.parametrize(
    ("status_code", "delay", "expected"),
    [
        (200, 1.0, DeliveryStatus.DELIVERED),
        (299, 1.0, DeliveryStatus.DELIVERED),
        (410, 1.0, DeliveryStatus.GONE),
        (404, 1.0, DeliveryStatus.PENDING),
        (None, 1.0, DeliveryStatus.PENDING),
        (500, 7200.0, DeliveryStatus.EXPIRED),  # the next try would come past the maximum age
    ],
)
def test_where_an_event_stands_after_a_try(
    status_code: int | None, delay: float, expected: DeliveryStatus
) -> None:
    now = datetime.now(UTC)
    event = ClaimedEvent(
        uuid4(), "default", EventType.AUDIT_FAILED, "https://h/", "{}", None, 1, now, now
    )
    outcome = TryOutcome(status_code, None, 5)

    state, next_try = next_state(event, outcome, now=now, max_age=timedelta(hours=1), delay=delay)

    assert state is expected
    assert (next_try is not None) == (expected is DeliveryStatus.PENDING)
