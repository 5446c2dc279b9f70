"""audit samples and provenance, reruns of audits and batches

- `audit.samples`: the independent model calls an audit asks for, 1 to 5. Rows written
  before this revision made one: the column comes with the default 1, which stays, so an
  API process of the previous revision can still insert during a rolling deploy. The
  CHECK is added NOT VALID and then validated, which scans the table without blocking
  writes.
- `audit.served_model`, `schema_sha256`, `temperature`, `seed`, `auditq_version`: the
  provenance of a succeeded audit, with `prompt_version` and `provider_request_id` that
  were already there. NULL for audits that succeeded before.
- `audit.rerun_of`, `batch.rerun_of`: the audit or batch a rerun copied; no foreign key,
  since retention may delete the original first.

Adding nullable columns, or one with a constant default, is instant.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As the revision wrote it; shared/audits/schemas.py's MAX_SAMPLES may change later.
SAMPLES_CHECK = "samples BETWEEN 1 AND 5"
_PROVENANCE: dict[str, sa.types.TypeEngine[Any]] = {
    "served_model": sa.Text(),
    "schema_sha256": sa.Text(),
    "temperature": sa.Float(),
    "seed": sa.BigInteger(),
    "auditq_version": sa.Text(),
}


def upgrade() -> None:
    op.add_column("audit", sa.Column("samples", sa.Integer(), nullable=False, server_default="1"))
    op.execute(
        f"ALTER TABLE audit ADD CONSTRAINT ck_audit_samples CHECK ({SAMPLES_CHECK}) NOT VALID"
    )
    op.execute("ALTER TABLE audit VALIDATE CONSTRAINT ck_audit_samples")
    for name, type_ in _PROVENANCE.items():
        op.add_column("audit", sa.Column(name, type_, nullable=True))
    op.add_column("audit", sa.Column("rerun_of", sa.Uuid(), nullable=True))
    op.add_column("batch", sa.Column("rerun_of", sa.Uuid(), nullable=True))


def downgrade() -> None:
    op.drop_column("batch", "rerun_of")
    op.drop_column("audit", "rerun_of")
    for name in reversed(_PROVENANCE):
        op.drop_column("audit", name)
    op.drop_column("audit", "samples")
