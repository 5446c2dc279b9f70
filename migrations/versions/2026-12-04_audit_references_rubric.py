"""audits that use a rubric reference it instead of copying its criteria

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.alter_column("audit", "criteria", nullable=True)
    # Rubric versions are immutable: the reference is the snapshot.
    op.execute("UPDATE audit SET criteria = NULL WHERE rubric_name IS NOT NULL")
    op.create_foreign_key(
        op.f("fk_audit_rubric_name_rubric"),
        "audit",
        "rubric",
        ["rubric_name", "rubric_version"],
        ["name", "version"],
    )
    op.create_check_constraint(
        op.f("ck_audit_criteria_or_rubric"),
        "audit",
        sa.text("(criteria IS NULL) = (rubric_name IS NOT NULL)"),
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_audit_criteria_or_rubric"), "audit", type_="check")
    op.drop_constraint(op.f("fk_audit_rubric_name_rubric"), "audit", type_="foreignkey")
    op.execute(
        "UPDATE audit SET criteria = rubric.criteria FROM rubric "
        "WHERE (rubric.name, rubric.version) = (audit.rubric_name, audit.rubric_version)"
    )
    op.alter_column("audit", "criteria", nullable=False)
