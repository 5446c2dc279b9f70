"""create audit

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STATUSES = "('queued', 'running', 'succeeded', 'failed', 'cancelled')"
NEWEST_FIRST = (sa.text("created_at DESC"), sa.text("id DESC"))


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column[object]:
    default = None if nullable else sa.func.now()
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def upgrade() -> None:
    op.create_table(
        "audit",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.Column("criteria", JSONB(), nullable=False),
        sa.Column("rubric_name", sa.Text(), nullable=True),
        sa.Column("rubric_version", sa.Integer(), nullable=True),
        sa.Column("model", sa.Text(), nullable=False),
        sa.Column("metadata", JSONB(), nullable=False),
        sa.Column("pass_threshold", sa.Float(), nullable=False),
        sa.Column("batch_id", sa.Uuid(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("attempt_limit", sa.Integer(), nullable=False),
        sa.Column("result", JSONB(), nullable=True),
        sa.Column("error_code", sa.Text(), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("prompt_version", sa.Text(), nullable=True),
        sa.Column("provider_request_id", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_hash", sa.Text(), nullable=True),
        _timestamp("lease_until"),
        _timestamp("created_at", nullable=False),
        _timestamp("updated_at", nullable=False),
        _timestamp("started_at"),
        _timestamp("finished_at"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit")),
        sa.CheckConstraint(f"status IN {STATUSES}", name=op.f("ck_audit_status")),
        sa.CheckConstraint("attempts >= 0", name=op.f("ck_audit_attempts")),
    )
    op.create_index("ix_audit_created", "audit", [*NEWEST_FIRST])
    op.create_index("ix_audit_status_created", "audit", ["status", *NEWEST_FIRST])
    op.create_index("ix_audit_batch_created", "audit", ["batch_id", *NEWEST_FIRST])
    op.create_index("ix_audit_rubric_created", "audit", ["rubric_name", *NEWEST_FIRST])
    op.create_index(
        "ix_audit_unfinished",
        "audit",
        ["status", "lease_until"],
        postgresql_where=sa.text("status IN ('queued', 'running')"),
    )
    op.create_index(
        "uq_audit_idempotency_key",
        "audit",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("audit")
