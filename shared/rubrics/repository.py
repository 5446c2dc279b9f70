"""Every statement on the `rubric` table, and the typed row it returns.

Rubrics are immutable (publishing a name again adds a version), so a lookup needs no
transaction: `find` serves the single-audit submit on a statement connection and a
batch inside its transaction alike.
"""

import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Self

from shared.db import Statements


@dataclass(frozen=True, slots=True)
class RubricRow:
    """One version of a rubric, every column (tests hold it to the table)."""

    tenant: str
    name: str
    version: int
    description: str
    criteria: list[dict[str, Any]]
    created_at: datetime

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        return cls(**record)


COLUMNS = tuple(f.name for f in fields(RubricRow))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM rubric"
_LATEST = f"{_SELECT} WHERE tenant = $1 AND name = $2 ORDER BY version DESC LIMIT 1"
_VERSION = f"{_SELECT} WHERE tenant = $1 AND name = $2 AND version = $3"
# A transaction-scoped advisory lock on the name serialises concurrent publishers, so
# two of them get versions n+1 and n+2, not a key conflict.
_LOCK_NAME = "SELECT pg_advisory_xact_lock(hashtext('auditq.rubrics'), hashtext($1 || '/' || $2))"
_INSERT_NEXT_VERSION = (
    "INSERT INTO rubric (tenant, name, version, description, criteria) "
    "SELECT $1, $2, coalesce(max(version), 0) + 1, $3, $4 FROM rubric "
    f"WHERE tenant = $1 AND name = $2 RETURNING {', '.join(COLUMNS)}"
)
_LATEST_PAGE = (
    f"SELECT DISTINCT ON (name) {', '.join(COLUMNS)} FROM rubric WHERE tenant = $1 "
    "AND name > $2 ORDER BY name, version DESC LIMIT $3"
)


async def find(
    conn: Statements, *, tenant: str, name: str, version: int | None = None
) -> RubricRow | None:
    """A given version of a tenant's rubric, or its latest when `version` is None."""
    if version is None:
        record = await conn.fetchrow(_LATEST, tenant, name)
    else:
        record = await conn.fetchrow(_VERSION, tenant, name, version)
    return None if record is None else RubricRow.of(record)


async def insert_next_version(
    conn: Statements, *, tenant: str, name: str, description: str, criteria: list[dict[str, Any]]
) -> RubricRow:
    """Store the next version of the tenant's `name` (1 for a new name); in a transaction."""
    await conn.fetchval(_LOCK_NAME, tenant, name)
    record = await conn.fetchrow(
        _INSERT_NEXT_VERSION, tenant, name, description, json.dumps(criteria)
    )
    assert record is not None, "INSERT … SELECT of an aggregate returns one row"
    return RubricRow.of(record)


async def latest_versions(
    conn: Statements, *, tenant: str, after_name: str, limit: int
) -> list[RubricRow]:
    """The latest version of each of the tenant's rubrics named after `after_name`, by name."""
    records = await conn.fetch(_LATEST_PAGE, tenant, after_name, limit)
    return [RubricRow.of(record) for record in records]
