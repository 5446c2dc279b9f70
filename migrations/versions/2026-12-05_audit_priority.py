"""audit priority: interactive audits run before bulk ones

Rows written before this revision are `bulk`: adding the column with a default is
instant (PostgreSQL keeps the default in the catalog, no table rewrite), and their
jobs were queued first-in-first-out anyway. The default is then dropped, so no new
row can be written without its priority.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As the revision wrote them; shared/audits/priority.py may grow later.
PRIORITY_CHECK = "priority IN ('interactive', 'bulk')"


def upgrade() -> None:
    op.add_column("audit", sa.Column("priority", sa.Text(), nullable=False, server_default="bulk"))
    op.alter_column("audit", "priority", server_default=None)
    op.create_check_constraint(op.f("ck_audit_priority"), "audit", PRIORITY_CHECK)
    op.create_index(
        "ix_audit_tenant_priority_created",
        "audit",
        ["tenant", "priority", sa.text("created_at DESC"), sa.text("id DESC")],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index("ix_audit_tenant_priority_created", table_name="audit")
    op.drop_column("audit", "priority")
