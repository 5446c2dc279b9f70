"""audits that use a rubric reference it instead of copying its criteria

Rows written before keep their copies (reads prefer an audit's own criteria, and a
copy is that version's criteria), so processes of the previous release keep working
while this one rolls out: they write copies, which the CHECK allows. Roll the
workers before the API: an older worker cannot run an audit that holds no copy.

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
        sa.text("criteria IS NOT NULL OR rubric_name IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_constraint(op.f("ck_audit_criteria_or_rubric"), "audit", type_="check")
    op.drop_constraint(op.f("fk_audit_rubric_name_rubric"), "audit", type_="foreignkey")
    op.execute(
        "UPDATE audit SET criteria = rubric.criteria FROM rubric "
        "WHERE (rubric.name, rubric.version) = (audit.rubric_name, audit.rubric_version)"
    )
    op.alter_column("audit", "criteria", nullable=False)
