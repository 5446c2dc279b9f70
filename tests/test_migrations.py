"""The migrations, run with the real `alembic` command against a scratch database.

Upgrade, downgrade to nothing and upgrade again must leave the same schema, and
`alembic check` must find nothing the models have that the migrations lack. The
migrated CHECK on `audit.status` and each repository's typed row are held to the
code that spells them.
The scratch database lives beside the test database and is dropped afterwards.
"""

import re
import subprocess
from collections.abc import AsyncIterator
from dataclasses import fields
from typing import Any
from uuid import uuid4

import asyncpg
import pytest
from sqlalchemy.engine import make_url

from shared.audits.models import Audit
from shared.audits.repository import AuditRow
from shared.audits.status import AuditStatus
from shared.batches.models import Batch
from shared.batches.repository import BatchRow
from shared.db import asyncpg_dsn
from shared.rubrics.models import Rubric
from shared.rubrics.repository import RubricRow
from shared.tenants.models import ApiKey, Tenant
from shared.tenants.repository import KeyRow, TenantRow
from shared.webhooks.models import WebhookAttempt, WebhookEvent
from shared.webhooks.repository import AttemptRow, EventRow
from tests.conftest import migrate

Schema = dict[str, list[tuple[str, ...]]]

SCHEMA_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, coalesce(column_default, '')
        FROM information_schema.columns WHERE table_schema = 'public'
        ORDER BY table_name, column_name
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'
        ORDER BY tablename, indexname
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
        ORDER BY 1, 2
    """,
}


@pytest.fixture(scope="module")
async def scratch_url(database_url: str) -> AsyncIterator[str]:
    """A new database on the test server, migrated to head; the test database is left alone."""
    name = f"auditq_migrations_{uuid4().hex[:12]}"
    admin = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await admin.execute(f"CREATE DATABASE {name}")
        url = make_url(database_url).set(database=name).render_as_string(hide_password=False)
        alembic(url, "upgrade", "head")
        yield url
    finally:
        await admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        await admin.close()


@pytest.fixture(scope="module")
async def migrated(scratch_url: str) -> Schema:
    """The schema `alembic upgrade head` built."""
    return await schema(scratch_url)


async def schema(url: str) -> Schema:
    connection = await asyncpg.connect(asyncpg_dsn(url))
    try:
        return {
            kind: [tuple(row) for row in await connection.fetch(query)]
            for kind, query in SCHEMA_QUERIES.items()
        }
    finally:
        await connection.close()


def tables(snapshot: Schema) -> set[str]:
    return {row[0] for row in snapshot["columns"]}


def alembic(url: str, *args: str) -> None:
    """`alembic <args>`; on failure the test shows what alembic said."""
    try:
        migrate(url, *args)
    except subprocess.CalledProcessError as exc:
        pytest.fail(f"alembic {' '.join(args)} failed:\n{exc.stdout.decode()}{exc.stderr.decode()}")


async def test_upgrade_downgrade_upgrade_leaves_the_same_schema(
    scratch_url: str, migrated: Schema
) -> None:
    alembic(scratch_url, "downgrade", "base")
    emptied = await schema(scratch_url)

    alembic(scratch_url, "upgrade", "head")
    remigrated = await schema(scratch_url)

    assert {"audit", "batch", "rubric", "alembic_version"} <= tables(migrated)
    assert tables(emptied) == {"alembic_version"}
    assert [row[1] for row in emptied["indexes"]] == ["alembic_version_pkc"]
    assert emptied["constraints"] == [
        ("alembic_version", "alembic_version_pkc", "PRIMARY KEY (version_num)")
    ]
    assert remigrated == migrated


def test_models_match_the_migrations(scratch_url: str) -> None:
    alembic(scratch_url, "check")


def test_audit_table_has_the_designed_shape(migrated: Schema) -> None:
    """timestamptz times, text statuses under a CHECK, newest-first indexes."""
    columns = {row[1]: row for row in migrated["columns"] if row[0] == "audit"}
    times = [name for name in columns if name.endswith("_at") or name == "lease_until"]
    assert len(times) == 5
    assert {columns[name][2] for name in times} == {"timestamp with time zone"}
    assert columns["status"][2] == "text"
    assert {columns[name][2] for name in ("criteria", "metadata", "result")} == {"jsonb"}
    constraints = {row[1]: row[2] for row in migrated["constraints"] if row[0] == "audit"}
    assert "'queued'" in constraints["ck_audit_status"]
    assert constraints["pk_audit"] == "PRIMARY KEY (id)"
    indexes = {row[1]: row[2] for row in migrated["indexes"] if row[0] == "audit"}
    for index in ("ix_audit_created", "ix_audit_status_created", "ix_audit_batch_created"):
        assert "created_at DESC, id DESC" in indexes[index]


async def test_the_status_check_allows_exactly_the_statuses_of_the_enum(database_url: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        definition = await connection.fetchval(
            "SELECT pg_get_constraintdef(oid) FROM pg_constraint WHERE conname = 'ck_audit_status'"
        )
    finally:
        await connection.close()

    assert set(re.findall(r"'(\w+)'::text", definition)) == {str(s) for s in AuditStatus}


@pytest.mark.parametrize(
    ("row", "table"),
    [
        (AuditRow, Audit),
        (BatchRow, Batch),
        (RubricRow, Rubric),
        (TenantRow, Tenant),
        (KeyRow, ApiKey),
        (EventRow, WebhookEvent),
        (AttemptRow, WebhookAttempt),
    ],
    ids=["audit", "batch", "rubric", "tenant", "api_key", "webhook_event", "webhook_attempt"],
)
def test_each_typed_row_has_every_column_of_its_table(row: type[Any], table: Any) -> None:
    assert {f.name for f in fields(row)} == {column.name for column in table.__table__.columns}


async def test_rows_from_before_tenants_belong_to_default(scratch_url: str) -> None:
    alembic(scratch_url, "downgrade", "0004")
    connection = await asyncpg.connect(asyncpg_dsn(scratch_url))
    try:
        await connection.execute(
            "INSERT INTO rubric (name, version, description, criteria) VALUES ('r', 1, '', '[]')"
        )
        alembic(scratch_url, "upgrade", "head")
        assert await connection.fetchval("SELECT tenant FROM rubric") == "default"
        assert await connection.fetchval("SELECT name FROM tenant") == "default"

        # Another tenant's rows would be merged into one: downgrading refuses.
        await connection.execute("UPDATE rubric SET tenant = 'acme'")
        with pytest.raises(subprocess.CalledProcessError) as refused:
            migrate(scratch_url, "downgrade", "0004")
        assert b"tenants other than default" in refused.value.stderr
        await connection.execute("DELETE FROM rubric")
    finally:
        await connection.close()
