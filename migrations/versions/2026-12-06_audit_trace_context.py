"""audit trace context: the worker continues the trace of the request that queued it

A nullable text column holding the W3C `traceparent` of the API's request span, and its
`tracestate` after a space when there is one (shared/tracing.py). NULL when the API did
not trace the request. Adding a nullable column without a default is instant.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("audit", sa.Column("trace_context", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("audit", "trace_context")
