"""The `tenant_spend` table: what each tenant's audits spent, month by month."""

from datetime import date
from decimal import Decimal

import sqlalchemy as sa
from sqlmodel import Field, SQLModel

from shared.db import USD, metadata  # noqa: F401  (naming convention must be set first)


class TenantSpend(SQLModel, table=True):
    """USD a tenant's billed replies cost in a calendar month (UTC), kept in a few rows
    (`shard`) so that concurrent finishes of one tenant do not queue on one row lock."""

    __tablename__ = "tenant_spend"

    tenant: str = Field(primary_key=True, sa_type=sa.Text)
    month: date = Field(primary_key=True, sa_type=sa.Date)
    shard: int = Field(primary_key=True, sa_type=sa.SmallInteger)
    cost_usd: Decimal = Field(sa_type=USD, sa_column_kwargs={"server_default": "0"})
