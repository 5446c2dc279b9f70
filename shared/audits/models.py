"""The `audit` table: its schema, for alembic and the repository's column list."""

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from shared.audits.priority import PRIORITY_CHECK, Priority
from shared.audits.schemas import MAX_SAMPLES
from shared.audits.status import TERMINAL, UNFINISHED, AuditStatus, sql_list
from shared.db import USD, metadata  # noqa: F401  (naming convention must be set first)


def _timestamp(*, nullable: bool = True) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), nullable=nullable)


def _text(*, nullable: bool = True, default: Any = None) -> Any:
    return Field(default=default, sa_type=sa.Text, nullable=nullable)


def _jsonb(*, nullable: bool = False) -> Any:
    return Field(default=None, sa_type=JSONB, nullable=nullable)


class Audit(SQLModel, table=True):
    __tablename__ = "audit"
    __table_args__ = (
        sa.CheckConstraint(f"status IN {sql_list(AuditStatus)}", name="status"),
        sa.CheckConstraint(PRIORITY_CHECK, name="priority"),
        sa.CheckConstraint("attempts >= 0", name="attempts"),
        sa.CheckConstraint(f"samples BETWEEN 1 AND {MAX_SAMPLES}", name="samples"),
        # An audit runs with inline criteria, or with a rubric version it references.
        sa.CheckConstraint(
            "(criteria IS NULL) = (rubric_name IS NOT NULL)", name="criteria_or_rubric"
        ),
        sa.ForeignKeyConstraint(
            ["tenant", "rubric_name", "rubric_version"],
            ["rubric.tenant", "rubric.name", "rubric.version"],
        ),
        # A member's lists, newest first, with and without a status filter; and the
        # quota's count of a tenant's queued and running audits.
        sa.Index(
            "ix_audit_tenant_created", "tenant", sa.text("created_at DESC"), sa.text("id DESC")
        ),
        sa.Index(
            "ix_audit_tenant_status_created",
            "tenant",
            "status",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
        ),
        sa.Index(
            "ix_audit_tenant_priority_created",
            "tenant",
            "priority",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
        ),
        sa.Index("ix_audit_created", sa.text("created_at DESC"), sa.text("id DESC")),
        sa.Index(
            "ix_audit_status_created", "status", sa.text("created_at DESC"), sa.text("id DESC")
        ),
        sa.Index(
            "ix_audit_batch_created", "batch_id", sa.text("created_at DESC"), sa.text("id DESC")
        ),
        sa.Index("ix_audit_batch_index", "batch_id", "batch_index"),
        sa.Index(
            "ix_audit_rubric_created",
            "rubric_name",
            sa.text("created_at DESC"),
            sa.text("id DESC"),
        ),
        sa.Index(
            "ix_audit_unfinished",
            "status",
            "lease_until",
            postgresql_where=sa.text(f"status IN {sql_list(UNFINISHED)}"),
        ),
        sa.Index(
            "ix_audit_finished",
            "finished_at",
            postgresql_where=sa.text(f"status IN {sql_list(TERMINAL)}"),
        ),
        sa.Index(
            "uq_audit_idempotency_key",
            "tenant",
            "idempotency_key",
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        ),
    )

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    tenant: str = _text(nullable=False)
    status: str = _text(nullable=False, default=AuditStatus.QUEUED)
    subject: str = _text(nullable=False)
    content: str = _text(nullable=False)
    criteria: list[dict[str, Any]] | None = _jsonb(nullable=True)
    rubric_name: str | None = _text()
    rubric_version: int | None = None
    model: str = _text(nullable=False)
    metadata_: dict[str, Any] = Field(
        default_factory=dict, sa_column=sa.Column("metadata", JSONB, nullable=False)
    )
    pass_threshold: float = 70.0
    batch_id: UUID | None = Field(default=None, foreign_key="batch.id")
    batch_index: int | None = None
    priority: str = _text(nullable=False, default=Priority.INTERACTIVE)
    attempts: int = 0
    attempt_limit: int
    result: dict[str, Any] | None = _jsonb(nullable=True)
    error_code: str | None = _text()
    error_message: str | None = _text()
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    # USD of every billed reply; NULL while none was, or when the model has no price.
    cost_usd: Decimal | None = Field(default=None, sa_type=USD)
    prompt_version: str | None = _text()
    provider_request_id: str | None = _text()
    # The rest of the provenance of a succeeded audit (shared/audits/runs.py).
    served_model: str | None = _text()
    schema_sha256: str | None = _text()
    temperature: float | None = None
    seed: int | None = Field(default=None, sa_type=sa.BigInteger)
    auditq_version: str | None = _text()
    samples: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # The audit this one re-runs: no foreign key, see shared/audits/repository.py.
    rerun_of: UUID | None = None
    request_id: str | None = _text()
    # The W3C trace context of the request that queued it (shared/tracing.py).
    trace_context: str | None = _text()
    idempotency_key: str | None = _text()
    request_hash: str | None = _text()
    # Where this audit's events go: its own `callback_url`, or its batch's with `item_events`.
    callback_url: str | None = _text()
    lease_until: datetime | None = _timestamp()
    created_at: datetime = Field(
        sa_type=sa.DateTime(timezone=True), sa_column_kwargs={"server_default": sa.func.now()}
    )
    updated_at: datetime = Field(
        sa_type=sa.DateTime(timezone=True), sa_column_kwargs={"server_default": sa.func.now()}
    )
    started_at: datetime | None = _timestamp()
    finished_at: datetime | None = _timestamp()
