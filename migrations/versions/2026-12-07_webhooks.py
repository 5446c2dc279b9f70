"""webhooks: callback URLs, per-tenant signing secrets, and the outbox of events

`audit.callback_url`, `batch.callback_url` and `batch.item_events` say where events go;
`tenant.webhook_secret` signs a tenant's (NULL: WEBHOOK_SECRET). Rows written before
this revision have no callback: the new columns are NULL, or false, without a rewrite.

`webhook_event` is the outbox: a row per event, written in the transaction that ends its
audit or batch, deleted with it (an audit's with its row as `snapshot`, its body rendered
at its first try). `webhook_attempt` keeps each try.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As the revision wrote them; shared/webhooks/vocabulary.py may grow later.
TYPE_CHECK = (
    "type IN ('audit.succeeded', 'audit.failed', 'audit.cancelled', "
    "'batch.completed', 'batch.cancelled')"
)
STATUS_CHECK = "status IN ('pending', 'delivered', 'gone', 'expired')"


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _owner(table: str) -> sa.Column[object]:
    return sa.Column(
        f"{table}_id",
        sa.Uuid(),
        sa.ForeignKey(
            f"{table}.id", name=op.f(f"fk_webhook_event_{table}_id_{table}"), ondelete="CASCADE"
        ),
        nullable=True,
    )


def upgrade() -> None:
    op.add_column("audit", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column("batch", sa.Column("callback_url", sa.Text(), nullable=True))
    op.add_column(
        "batch",
        sa.Column("item_events", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.add_column("tenant", sa.Column("webhook_secret", sa.Text(), nullable=True))
    _create_outbox()


def _create_outbox() -> None:
    op.create_table(
        "webhook_event",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        _owner("audit"),
        _owner("batch"),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("payload", sa.Text(), nullable=True),
        sa.Column("snapshot", JSONB(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        _timestamp("next_attempt_at"),
        _timestamp("created_at", nullable=False),
        _timestamp("settled_at"),
        sa.CheckConstraint(TYPE_CHECK, name=op.f("ck_webhook_event_type")),
        sa.CheckConstraint(STATUS_CHECK, name=op.f("ck_webhook_event_status")),
        sa.CheckConstraint(
            "(audit_id IS NULL) <> (batch_id IS NULL)", name=op.f("ck_webhook_event_one_owner")
        ),
        sa.CheckConstraint(
            "payload IS NOT NULL OR snapshot IS NOT NULL",
            name=op.f("ck_webhook_event_payload_or_snapshot"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_webhook_event")),
    )
    op.create_index(
        "ix_webhook_event_due",
        "webhook_event",
        ["next_attempt_at"],
        postgresql_where=sa.text("status = 'pending'"),
    )
    for owner in ("audit", "batch"):
        op.create_index(
            f"ix_webhook_event_{owner}",
            "webhook_event",
            [f"{owner}_id", sa.text("created_at DESC"), sa.text("id DESC")],
        )
    op.create_table(
        "webhook_attempt",
        sa.Column("event_id", sa.Uuid(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        _timestamp("started_at", nullable=False),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["webhook_event.id"],
            name=op.f("fk_webhook_attempt_event_id_webhook_event"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("event_id", "number", name=op.f("pk_webhook_attempt")),
    )


def downgrade() -> None:
    op.drop_table("webhook_attempt")
    op.drop_table("webhook_event")
    op.drop_column("tenant", "webhook_secret")
    op.drop_column("batch", "item_events")
    op.drop_column("batch", "callback_url")
    op.drop_column("audit", "callback_url")
