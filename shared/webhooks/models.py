"""The outbox of webhook events (`webhook_event`) and the tries to deliver them
(`webhook_attempt`).

An event is written in the transaction that ends its audit or batch (shared/webhooks/
outbox.py) and belongs to exactly one of the two; it goes when its resource goes
(retention), its tries with it.
"""

from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from shared.db import metadata  # noqa: F401  (naming convention must be set first)
from shared.webhooks.vocabulary import DeliveryStatus, EventType, check_of


def _timestamp(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=nullable)


def _owner(table: str) -> Any:
    return Field(
        default=None,
        sa_column=sa.Column(
            f"{table}_id", sa.Uuid(), sa.ForeignKey(f"{table}.id", ondelete="CASCADE")
        ),
    )


class WebhookEvent(SQLModel, table=True):
    __tablename__ = "webhook_event"
    __table_args__ = (
        sa.CheckConstraint(check_of(EventType, "type"), name="type"),
        sa.CheckConstraint(check_of(DeliveryStatus, "status"), name="status"),
        sa.CheckConstraint("(audit_id IS NULL) <> (batch_id IS NULL)", name="one_owner"),
        sa.CheckConstraint(
            "payload IS NOT NULL OR snapshot IS NOT NULL", name="payload_or_snapshot"
        ),
        # The deliverers' claim: the due events, soonest first.
        sa.Index(
            "ix_webhook_event_due",
            "next_attempt_at",
            postgresql_where=sa.text(f"status = '{DeliveryStatus.PENDING}'"),
        ),
        # GET /audits/{id}/deliveries and GET /batches/{id}/deliveries, newest first.
        sa.Index(
            "ix_webhook_event_audit", "audit_id", sa.text("created_at DESC"), sa.text("id DESC")
        ),
        sa.Index(
            "ix_webhook_event_batch", "batch_id", sa.text("created_at DESC"), sa.text("id DESC")
        ),
    )

    id: UUID = Field(primary_key=True)
    tenant: str = Field(sa_type=sa.Text)
    type: str = Field(sa_type=sa.Text)
    audit_id: UUID | None = _owner("audit")
    batch_id: UUID | None = _owner("batch")
    url: str = Field(sa_type=sa.Text)
    # The body as sent; an audit's event is written with its row (`snapshot`, without its
    # content) by the statement that ends it, and its body rendered at its first try.
    payload: str | None = Field(default=None, sa_type=sa.Text)
    snapshot: dict[str, Any] | None = Field(default=None, sa_type=JSONB)
    status: str = Field(sa_type=sa.Text)
    attempts: int = 0
    next_attempt_at: datetime | None = _timestamp()
    created_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    settled_at: datetime | None = _timestamp()


class WebhookAttempt(SQLModel, table=True):
    """One try: the receiver's status code, or why there was none (`error`)."""

    __tablename__ = "webhook_attempt"

    event_id: UUID = Field(
        sa_column=sa.Column(
            "event_id",
            sa.Uuid(),
            sa.ForeignKey("webhook_event.id", ondelete="CASCADE"),
            primary_key=True,
        )
    )
    number: int = Field(primary_key=True)
    started_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    duration_ms: int
    status_code: int | None = None
    error: str | None = Field(default=None, sa_type=sa.Text)
