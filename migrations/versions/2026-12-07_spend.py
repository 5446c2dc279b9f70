"""spend: the cost of each audit, budgets per batch and per tenant, spend per tenant and month

- `audit.cost_usd`: USD of every billed reply of the audit (NULL: none, or no price).
- `batch.max_cost_usd`, `batch.spent_usd` (kept only for a batch with a budget) and
  `batch.budget_exhausted_at`.
- `tenant.monthly_budget_usd`.
- `tenant_spend`: USD per tenant and calendar month (UTC), in a few rows per month.

Every new column is nullable without a default, so adding it is instant. Amounts are
`numeric(20, 10)`: exact.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USD = sa.Numeric(20, 10)


def upgrade() -> None:
    op.add_column("audit", sa.Column("cost_usd", USD, nullable=True))
    op.add_column("batch", sa.Column("max_cost_usd", USD, nullable=True))
    op.add_column("batch", sa.Column("spent_usd", USD, nullable=True))
    op.add_column(
        "batch", sa.Column("budget_exhausted_at", sa.DateTime(timezone=True), nullable=True)
    )
    op.create_check_constraint(
        op.f("ck_batch_budget"), "batch", "(max_cost_usd IS NULL) = (spent_usd IS NULL)"
    )
    op.create_check_constraint(op.f("ck_batch_max_cost_usd"), "batch", "max_cost_usd > 0")
    op.add_column("tenant", sa.Column("monthly_budget_usd", USD, nullable=True))
    op.create_check_constraint(
        op.f("ck_tenant_monthly_budget_usd"), "tenant", "monthly_budget_usd >= 0"
    )
    op.create_table(
        "tenant_spend",
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("month", sa.Date(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("cost_usd", USD, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("tenant", "month", "shard", name=op.f("pk_tenant_spend")),
    )


def downgrade() -> None:
    op.drop_table("tenant_spend")
    op.drop_constraint(op.f("ck_tenant_monthly_budget_usd"), "tenant", type_="check")
    op.drop_column("tenant", "monthly_budget_usd")
    op.drop_constraint(op.f("ck_batch_max_cost_usd"), "batch", type_="check")
    op.drop_constraint(op.f("ck_batch_budget"), "batch", type_="check")
    op.drop_column("batch", "budget_exhausted_at")
    op.drop_column("batch", "spent_usd")
    op.drop_column("batch", "max_cost_usd")
    op.drop_column("audit", "cost_usd")
