"""The `batch` table. Its counts, status and finish time are derived from its audits."""

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from shared.db import USD, metadata  # noqa: F401  (naming convention must be set first)


class Batch(SQLModel, table=True):
    __tablename__ = "batch"
    __table_args__ = (
        sa.Index("ix_batch_created", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index(
            "ix_batch_tenant_created", "tenant", sa.text("created_at DESC"), sa.text("id DESC")
        ),
        sa.Index(
            "uq_batch_idempotency_key",
            "tenant",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
        # A batch with a budget keeps count of its spend; one without has neither.
        sa.CheckConstraint("(max_cost_usd IS NULL) = (spent_usd IS NULL)", name="budget"),
        sa.CheckConstraint("max_cost_usd > 0", name="max_cost_usd"),
    )

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    tenant: str = Field(sa_type=sa.Text)
    name: str | None = Field(default=None, sa_type=sa.Text)
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONB, nullable=False)
    )
    idempotency_key: str | None = Field(default=None, sa_type=sa.Text)
    request_hash: str | None = Field(default=None, sa_type=sa.Text)
    request_id: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = Field(
        sa_type=sa.DateTime(timezone=True), sa_column_kwargs={"server_default": sa.func.now()}
    )
    cancelled_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    # The batch this one re-runs (`POST /batches/{id}/rerun`); no foreign key, as an audit's.
    rerun_of: UUID | None = None
    # Where the batch's events go; its audits' too when `item_events`.
    callback_url: str | None = Field(default=None, sa_type=sa.Text)
    item_events: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    # The budget, and the spend of the audits counted against it (shared/spend/budgets.py).
    max_cost_usd: Decimal | None = Field(default=None, sa_type=USD)
    spent_usd: Decimal | None = Field(default=None, sa_type=USD)
    # When the spend was first seen at the budget and the audits left were cancelled.
    budget_exhausted_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
