"""What a webhook carries, and how its deliveries are shown (`GET …/{id}/deliveries`)."""

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from shared.audits.schemas import AuditRead
from shared.batches.schemas import BatchRead
from shared.webhooks.vocabulary import DeliveryStatus, EventType


class EventPayload(BaseModel):
    """The body of every webhook: `data` is the resource as `GET` returns it, without content,
    as it was when the event happened."""

    type: EventType
    timestamp: datetime = Field(description="When the audit or batch ended.")
    data: AuditRead | BatchRead


class Attempt(BaseModel):
    number: int = Field(description="1 for the first try; a gap is a try whose worker stopped.")
    started_at: datetime
    duration_ms: int
    status_code: int | None = Field(description="The receiver's answer; null when none came.")
    error: str | None = Field(
        description="Why no answer counted: a timeout, a refused connection, a redirect, a "
        "host that is not allowed (`callback_url_not_allowed`), …"
    )


class Delivery(BaseModel):
    """One event and every try to deliver it."""

    id: UUID = Field(description="The event's `webhook-id`, the same on every try.")
    type: EventType
    url: str
    status: DeliveryStatus = Field(
        description="`pending` (tried again at `next_attempt_at`), `delivered` (a 2xx), "
        "`gone` (a 410: no more tries) or `expired` (no 2xx within WEBHOOK_MAX_AGE_S)."
    )
    created_at: datetime
    next_attempt_at: datetime | None
    settled_at: datetime | None
    attempts: list[Attempt]


class DeliveryPage(BaseModel):
    items: list[Delivery]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
