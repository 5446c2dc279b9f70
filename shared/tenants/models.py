"""The `tenant` and `api_key` tables: who owns what, and the keys that act for them."""

from datetime import datetime
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import USD, metadata  # noqa: F401  (naming convention must be set first)
from shared.tenants.caller import Role


def _created_at() -> Any:
    return Field(
        sa_type=sa.DateTime(timezone=True), sa_column_kwargs={"server_default": sa.func.now()}
    )


ROLES = "(" + ", ".join(f"'{role}'" for role in Role) + ")"


class Tenant(SQLModel, table=True):
    """A tenant's overrides of the quota and webhook settings (NULL: the setting), its
    weight and its monthly budget."""

    __tablename__ = "tenant"
    __table_args__ = (
        sa.CheckConstraint("max_queued IS NULL OR max_queued >= 1", name="max_queued"),
        sa.CheckConstraint("submit_rpm IS NULL OR submit_rpm >= 1", name="submit_rpm"),
        sa.CheckConstraint("weight >= 1", name="weight"),
        sa.CheckConstraint("monthly_budget_usd >= 0", name="monthly_budget_usd"),
    )

    name: str = Field(primary_key=True, sa_type=sa.Text)
    max_queued: int | None = None
    submit_rpm: int | None = None
    weight: int = Field(default=1, sa_column_kwargs={"server_default": "1"})
    # USD its audits may spend in a calendar month (UTC); NULL: no budget.
    monthly_budget_usd: Decimal | None = Field(default=None, sa_type=USD)
    created_at: datetime = _created_at()
    # Signs the tenant's webhooks (`whsec_…`) instead of WEBHOOK_SECRET; NULL: the setting.
    webhook_secret: str | None = Field(default=None, sa_type=sa.Text)


class ApiKey(SQLModel, table=True):
    """A key of a tenant: its SHA-256 and a display prefix, never the key itself."""

    __tablename__ = "api_key"
    __table_args__ = (
        sa.CheckConstraint(f"role IN {ROLES}", name="role"),
        sa.Index("uq_api_key_secret_hash", "secret_hash", unique=True),
        sa.Index("ix_api_key_prefix", "prefix"),
    )

    id: UUID = Field(default_factory=uuid4, primary_key=True)
    tenant: str = Field(sa_type=sa.Text, foreign_key="tenant.name")
    label: str | None = Field(default=None, sa_type=sa.Text)
    prefix: str = Field(sa_type=sa.Text)
    secret_hash: str = Field(sa_type=sa.Text)
    role: str = Field(sa_type=sa.Text)
    created_at: datetime = _created_at()
    last_used_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
    revoked_at: datetime | None = Field(default=None, sa_type=sa.DateTime(timezone=True))
