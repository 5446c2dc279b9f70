"""The `rubric` table: named criteria sets, immutable, one row per version; names are per tenant."""

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlmodel import Field, SQLModel

from shared.db import metadata  # noqa: F401  (naming convention must be set first)


class Rubric(SQLModel, table=True):
    __tablename__ = "rubric"

    tenant: str = Field(primary_key=True, sa_type=sa.Text)
    name: str = Field(primary_key=True, sa_type=sa.Text)
    version: int = Field(primary_key=True)
    description: str = Field(sa_type=sa.Text)
    criteria: list[dict[str, Any]] = Field(sa_type=JSONB)
    created_at: datetime = Field(
        sa_type=sa.DateTime(timezone=True), sa_column_kwargs={"server_default": sa.func.now()}
    )
