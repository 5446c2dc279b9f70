"""tenants: keys that own what they create, and quotas per tenant

Every audit, batch and rubric gets a `tenant`; rows written before belong to
`default`. A rubric's name, and an idempotency key, are unique within a tenant.
Adding the column with a default is instant (PostgreSQL keeps the default in the
catalog for rows written before); the default is then dropped, so no new row can
be written without naming its tenant.

Downgrading is refused while any row belongs to another tenant than `default`: the
schema before this revision could not tell them apart.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

OWNED = ("audit", "batch", "rubric")


def _timestamp(name: str, *, nullable: bool = True) -> sa.Column[Any]:
    default = None if nullable else sa.text("now()")
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable, server_default=default)


def _newest_first(name: str, table: str, *columns: str) -> None:
    op.create_index(
        name, table, [*columns, sa.text("created_at DESC"), sa.text("id DESC")], unique=False
    )


def upgrade() -> None:
    _create_tenant_and_api_key()
    for table in OWNED:
        op.add_column(
            table, sa.Column("tenant", sa.Text(), nullable=False, server_default="default")
        )
        op.alter_column(table, "tenant", server_default=None)
    _rubric_names_per_tenant()
    _idempotency_keys_per_tenant(("tenant", "idempotency_key"))
    _newest_first("ix_audit_tenant_created", "audit", "tenant")
    _newest_first("ix_audit_tenant_status_created", "audit", "tenant", "status")
    _newest_first("ix_batch_tenant_created", "batch", "tenant")


def _create_tenant_and_api_key() -> None:
    op.create_table(
        "tenant",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("max_queued", sa.Integer(), nullable=True),
        sa.Column("submit_rpm", sa.Integer(), nullable=True),
        sa.Column("weight", sa.Integer(), nullable=False, server_default="1"),
        _timestamp("created_at", nullable=False),
        sa.CheckConstraint(
            "max_queued IS NULL OR max_queued >= 1", name=op.f("ck_tenant_max_queued")
        ),
        sa.CheckConstraint(
            "submit_rpm IS NULL OR submit_rpm >= 1", name=op.f("ck_tenant_submit_rpm")
        ),
        sa.CheckConstraint("weight >= 1", name=op.f("ck_tenant_weight")),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_tenant")),
    )
    op.execute("INSERT INTO tenant (name) VALUES ('default')")
    op.create_table(
        "api_key",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("tenant", sa.Text(), nullable=False),
        sa.Column("label", sa.Text(), nullable=True),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("secret_hash", sa.Text(), nullable=False),
        sa.Column("role", sa.Text(), nullable=False),
        _timestamp("created_at", nullable=False),
        _timestamp("last_used_at"),
        _timestamp("revoked_at"),
        sa.CheckConstraint("role IN ('member', 'admin')", name=op.f("ck_api_key_role")),
        sa.ForeignKeyConstraint(["tenant"], ["tenant.name"], name=op.f("fk_api_key_tenant_tenant")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_key")),
    )
    op.create_index("uq_api_key_secret_hash", "api_key", ["secret_hash"], unique=True)
    op.create_index("ix_api_key_prefix", "api_key", ["prefix"], unique=False)


def _rubric_names_per_tenant() -> None:
    op.drop_constraint("fk_audit_rubric_name_rubric", "audit", type_="foreignkey")
    op.drop_constraint("pk_rubric", "rubric", type_="primary")
    op.create_primary_key("pk_rubric", "rubric", ["tenant", "name", "version"])
    op.create_foreign_key(
        "fk_audit_tenant_rubric",
        "audit",
        "rubric",
        ["tenant", "rubric_name", "rubric_version"],
        ["tenant", "name", "version"],
    )


def _idempotency_keys_per_tenant(columns: tuple[str, ...]) -> None:
    for table in ("audit", "batch"):
        name = f"uq_{table}_idempotency_key"
        op.drop_index(name, table_name=table)
        op.create_index(
            name,
            table,
            list(columns),
            unique=True,
            postgresql_where=sa.text("idempotency_key IS NOT NULL"),
        )


def downgrade() -> None:
    _refuse_other_tenants()
    op.drop_index("ix_batch_tenant_created", table_name="batch")
    op.drop_index("ix_audit_tenant_status_created", table_name="audit")
    op.drop_index("ix_audit_tenant_created", table_name="audit")
    _idempotency_keys_per_tenant(("idempotency_key",))
    op.drop_constraint("fk_audit_tenant_rubric", "audit", type_="foreignkey")
    op.drop_constraint("pk_rubric", "rubric", type_="primary")
    op.create_primary_key("pk_rubric", "rubric", ["name", "version"])
    op.create_foreign_key(
        "fk_audit_rubric_name_rubric",
        "audit",
        "rubric",
        ["rubric_name", "rubric_version"],
        ["name", "version"],
    )
    for table in OWNED:
        op.drop_column(table, "tenant")
    op.drop_table("api_key")
    op.drop_table("tenant")


def _refuse_other_tenants() -> None:
    owned = " UNION ALL ".join(
        f"SELECT 1 FROM {table} WHERE tenant <> 'default'" for table in OWNED
    )
    op.execute(
        "DO $$ BEGIN IF EXISTS (" + owned + ") THEN RAISE EXCEPTION "
        "'rows of tenants other than default exist: the schema before revision 0005 "
        "cannot keep them apart; delete them first'; END IF; END $$"
    )
