"""batches and rubrics

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _created_at() -> sa.Column[object]:
    return sa.Column(
        "created_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
    )


def upgrade() -> None:
    op.create_table(
        "rubric",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("criteria", JSONB(), nullable=False),
        _created_at(),
        sa.PrimaryKeyConstraint("name", "version", name=op.f("pk_rubric")),
    )
    op.create_table(
        "batch",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("name", sa.Text(), nullable=True),
        sa.Column("metadata", JSONB(), nullable=False),
        sa.Column("idempotency_key", sa.Text(), nullable=True),
        sa.Column("request_hash", sa.Text(), nullable=True),
        sa.Column("request_id", sa.Text(), nullable=True),
        _created_at(),
        sa.Column("cancelled_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_batch")),
    )
    op.create_index("ix_batch_created", "batch", [sa.text("created_at DESC"), sa.text("id DESC")])
    op.create_index(
        "uq_batch_idempotency_key",
        "batch",
        ["idempotency_key"],
        unique=True,
        postgresql_where=sa.text("idempotency_key IS NOT NULL"),
    )
    op.add_column("audit", sa.Column("batch_index", sa.Integer(), nullable=True))
    op.create_index("ix_audit_batch_index", "audit", ["batch_id", "batch_index"])
    op.create_foreign_key(op.f("fk_audit_batch_id_batch"), "audit", "batch", ["batch_id"], ["id"])


def downgrade() -> None:
    op.drop_constraint(op.f("fk_audit_batch_id_batch"), "audit", type_="foreignkey")
    op.drop_index("ix_audit_batch_index", table_name="audit")
    op.drop_column("audit", "batch_index")
    op.drop_table("batch")
    op.drop_table("rubric")
