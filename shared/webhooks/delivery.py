"""The deliverer: a loop in each worker process that sends the outbox's due events.

It runs beside the audits, never in their way: its own task, its own two pooled
connections, at most `CONCURRENCY` tries at once, each bounded by a 10 s timeout. A slow
or failing receiver fills these slots and nothing else.

- **At least once.** An event is claimed with a lease (shared/webhooks/repository.py); a
  try whose worker dies, or whose outcome cannot be written, is tried again once the
  lease ends, with the same `webhook-id`. Receivers deduplicate by it.
- **Any 2xx** delivers. **410** means the receiver is gone: no more tries. Anything else
  (another status, a redirect, a timeout, a refused connection, a host no longer allowed)
  is tried again after 2 s, 4 s, 8 s… doubling up to an hour, each wait drawn between
  half and all of that (jitter, so that a receiver coming back is not hit by every
  retry at once), until `WEBHOOK_MAX_AGE_S` after the event: then it is `expired`.
- **Order is not kept.** Events are claimed soonest-due first by several workers at once,
  and a retried one comes after events that happened later.
- Each try is signed afresh (a timestamp of its own), with the tenant's secret or
  WEBHOOK_SECRET, looked up at most every `KEY_TTL_S`: a rotated secret signs the next
  tries. An event whose tenant has no secret any more is not sent unsigned: the try
  fails, and is tried again as above.
"""

import asyncio
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import structlog
from pydantic import SecretStr
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.db import DATABASE_ERRORS, statement_connection
from shared.tenants import repository as tenants
from shared.webhooks import repository as events
from shared.webhooks.payloads import audit_body
from shared.webhooks.repository import AttemptRow, ClaimedEvent
from shared.webhooks.sending import TRY_TIMEOUT_S, Sender, TryOutcome
from shared.webhooks.signing import InvalidSecret, secret_key, signature_headers
from shared.webhooks.vocabulary import DeliveryStatus

log = structlog.get_logger("worker.webhooks")

CONCURRENCY = 32
# A try's whole time (10 s), its key lookup and its outcome's write fit well inside.
LEASE = timedelta(seconds=3 * TRY_TIMEOUT_S)
IDLE_POLL_S = 0.5
SLOT_GATHER_S = 0.002
DATABASE_PAUSE_S = 1.0
FIRST_RETRY_S = 2.0
MAX_RETRY_S = 3600.0
KEY_TTL_S = 5.0
GONE = 410
UNRENDERABLE = "the event's body could not be rendered from its row (the worker's log says why)"


def _not_told(status: DeliveryStatus) -> None:
    pass


def retry_delay(tries: int, *, draw: Callable[[], float] = random.random) -> float:
    """Seconds to wait after the `tries`-th failed try: 2, 4, 8… up to 3,600, jittered."""
    # The exponent stops growing once past the cap: a float's power would overflow.
    ceiling = min(MAX_RETRY_S, FIRST_RETRY_S * 2.0 ** min(tries - 1, 32))
    return ceiling * (0.5 + 0.5 * draw())


def next_state(
    event: ClaimedEvent, outcome: TryOutcome, *, now: datetime, max_age: timedelta, delay: float
) -> tuple[DeliveryStatus, datetime | None]:
    """Where the event stands after this try, and when it is tried next (None: never)."""
    if outcome.delivered:
        return DeliveryStatus.DELIVERED, None
    if outcome.status_code == GONE:
        return DeliveryStatus.GONE, None
    next_try = now + timedelta(seconds=delay)
    if next_try > event.created_at + max_age:
        return DeliveryStatus.EXPIRED, None
    return DeliveryStatus.PENDING, next_try


@dataclass
class SigningKeys:
    """The key that signs a tenant's events: its own secret, else WEBHOOK_SECRET's."""

    engine: AsyncEngine
    default: SecretStr | None
    _known: dict[str, tuple[bytes | None, float]] = field(default_factory=dict)

    async def of(self, tenant: str) -> bytes | None:
        known = self._known.get(tenant)
        if known is not None and time.monotonic() - known[1] < KEY_TTL_S:
            return known[0]
        async with statement_connection(self.engine) as conn:
            row = await tenants.get_tenant(conn, tenant)
        own = None if row is None else row.webhook_secret
        secret = own if own is not None else self._default_secret()
        key = None
        if secret is not None:
            try:
                key = secret_key(secret)
            except InvalidSecret as exc:  # only a hand-edited row: the CLI checks secrets
                log.error("webhook_secret_invalid", tenant=tenant, problem=str(exc))
        self._known[tenant] = (key, time.monotonic())
        return key

    def _default_secret(self) -> str | None:
        return None if self.default is None else self.default.get_secret_value()


class Deliverer:
    """Claims due events and tries each, `concurrency` at once, until cancelled.

    `lease` and `backoff` (the wait after the n-th failed try) are the module's; tests
    shorten them. `on_tried` hears where each recorded try left its event (the worker's
    metrics).
    """

    def __init__(
        self,
        engine: AsyncEngine,
        sender: Sender,
        keys: SigningKeys,
        *,
        max_age: timedelta,
        concurrency: int = CONCURRENCY,
        lease: timedelta = LEASE,
        backoff: Callable[[int], float] = retry_delay,
        on_tried: Callable[[DeliveryStatus], None] = _not_told,
    ) -> None:
        self._engine = engine
        self._sender = sender
        self._keys = keys
        self._max_age = max_age
        self._concurrency = concurrency
        self._lease = lease
        self._backoff = backoff
        self._on_tried = on_tried
        self._tries: set[asyncio.Task[None]] = set()
        self._slot_freed = asyncio.Event()

    async def run(self) -> None:
        """Deliver until cancelled; PostgreSQL going away pauses it, nothing else stops it.

        Cancelled, it cancels its tries: their events are tried again once their lease
        ends, by whichever worker claims them.
        """
        try:
            while True:
                await self._fill_free_slots()
        finally:
            for task in self._tries:
                task.cancel()
            await asyncio.gather(*self._tries, return_exceptions=True)

    async def _fill_free_slots(self) -> None:
        free = self._concurrency - len(self._tries)
        if free <= 0:
            self._slot_freed.clear()
            await self._slot_freed.wait()
            await asyncio.sleep(SLOT_GATHER_S)  # the tries that end together: one claim
            return
        try:
            async with statement_connection(self._engine) as conn:
                claimed = await events.claim_due(conn, limit=free, lease=self._lease)
        except DATABASE_ERRORS as exc:
            log.warning("webhooks_database_unavailable", error=type(exc).__name__)
            await asyncio.sleep(DATABASE_PAUSE_S)
            return
        claimed_at = time.monotonic()  # PostgreSQL's `claimed_at`, on this process's clock
        for event in claimed:
            task = asyncio.create_task(self._try(event, claimed_at))
            self._tries.add(task)
            task.add_done_callback(self._try_ended)
        if len(claimed) < free:  # nothing more is due: look again in a while
            await asyncio.sleep(IDLE_POLL_S)

    def _try_ended(self, task: asyncio.Task[None]) -> None:
        self._tries.discard(task)
        self._slot_freed.set()

    async def _try(self, event: ClaimedEvent, claimed_at: float) -> None:
        """One try and its record; whatever goes wrong, the lease brings the event back."""
        try:
            await self._try_and_record(event, claimed_at)
        except DATABASE_ERRORS as exc:
            # Tried again once its lease ends: at least once, maybe twice.
            log.warning("webhook_try_not_recorded", event_id=str(event.id), error=str(exc))
        except Exception:
            log.exception("webhook_try_failed", event_id=str(event.id))

    async def _try_and_record(self, event: ClaimedEvent, claimed_at: float) -> None:
        """Send the event once and record the try. Its times are on PostgreSQL's clock,
        which the claim reads due events by: the claim's `now()`, plus what has passed
        since the claim (`claimed_at`) on this process's monotonic clock."""

        def now() -> datetime:
            return event.claimed_at + timedelta(seconds=time.monotonic() - claimed_at)

        started_at = now()
        payload = _body_or_none(event)
        if payload is None:
            outcome = TryOutcome(None, UNRENDERABLE, 0)
        else:
            outcome = await self._send(event, payload)
        state, next_try = next_state(
            event,
            outcome,
            now=now(),
            max_age=self._max_age,
            delay=self._backoff(event.attempts),
        )
        attempt = AttemptRow(
            event_id=event.id,
            number=event.attempts,
            started_at=started_at,
            duration_ms=outcome.duration_ms,
            status_code=outcome.status_code,
            error=outcome.error,
        )
        async with statement_connection(self._engine) as conn:
            await events.record_attempt(
                conn, attempt, status=state, next_attempt_at=next_try, payload=payload
            )
        _log_try(event, outcome, state, next_try)
        self._on_tried(state)

    async def _send(self, event: ClaimedEvent, payload: str) -> TryOutcome:
        key = await self._keys.of(event.tenant)
        if key is None:
            return TryOutcome(None, "no webhook secret for this tenant: nothing was sent", 0)
        body = payload.encode()
        headers = signature_headers(
            key, event_id=str(event.id), timestamp=int(time.time()), body=body
        )
        return await self._sender.post(event.url, body=body, headers=headers)


def body_of(event: ClaimedEvent) -> str:
    """What the event sends: its body, or at its first try the one rendered from its row."""
    if event.payload is not None:
        return event.payload
    assert event.snapshot is not None, "an event has a body or a row to render it from"
    return audit_body(event.type, timestamp=event.created_at, snapshot=event.snapshot)


def _body_or_none(event: ClaimedEvent) -> str | None:
    """`body_of`, or None for a row this version cannot render: that is a failed try, so
    that backoff and WEBHOOK_MAX_AGE_S apply, rather than an event its lease brings back
    forever."""
    try:
        return body_of(event)
    except Exception:
        log.exception("webhook_body_unrenderable", event_id=str(event.id))
        return None


def _log_try(
    event: ClaimedEvent, outcome: TryOutcome, state: DeliveryStatus, next_try: datetime | None
) -> None:
    fields = {
        "event_id": str(event.id),
        "tenant": event.tenant,
        "attempt": event.attempts,
        "status_code": outcome.status_code,
    }
    if state is DeliveryStatus.DELIVERED:
        log.debug("webhook_delivered", **fields)
    elif state is DeliveryStatus.PENDING:
        assert next_try is not None
        log.info(
            "webhook_retry_scheduled", **fields, error=outcome.error, next_try=next_try.isoformat()
        )
    else:
        log.warning(f"webhook_{state}", **fields, error=outcome.error)
