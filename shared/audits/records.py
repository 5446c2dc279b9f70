"""The SQL of the audits API's hot paths, for a driver connection (`StatementConnection`).

Submitting one audit and reading one are the API's busiest requests; through
SQLAlchemy's statement execution they cost several times the CPU of the same
statements sent by the driver (bench/RESULTS.md). The SQL is built once from the
table's metadata, so a column a migration adds cannot be missed here, and the
driver prepares each statement once per connection. JSONB goes in as JSON text
and comes back decoded: the codec SQLAlchemy sets on the pool's connections.
"""

import json
from collections.abc import Mapping
from functools import cache
from typing import Any

import asyncpg
from sqlalchemy.dialects.postgresql import JSONB

from shared.audits.models import Audit
from shared.db import metadata

AUDIT = metadata.tables[str(Audit.__tablename__)]
COLUMNS = tuple(column.name for column in AUDIT.columns)
_JSONB = frozenset(column.name for column in AUDIT.columns if isinstance(column.type, JSONB))
_SELECT = f"SELECT {', '.join(COLUMNS)} FROM audit"

# An audit by column name (`metadata`, not the model's `metadata_`), JSON decoded: what the
# API's service functions return and shared/audits/views.py shows.
AuditColumns = Mapping[str, Any]

SELECT_BY_ID = f"{_SELECT} WHERE id = $1"
SELECT_BY_IDEMPOTENCY_KEY = f"{_SELECT} WHERE idempotency_key = $1"


@cache
def insert_unless_key_taken(columns: tuple[str, ...]) -> str:
    """INSERT of these columns that does nothing when its idempotency key is taken."""
    values = ", ".join(f"${n}" for n in range(1, len(columns) + 1))
    return (
        f"INSERT INTO audit ({', '.join(columns)}) VALUES ({values}) "
        "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING "
        "RETURNING created_at, updated_at"
    )


def parameters(row: Mapping[str, Any]) -> list[Any]:
    """A row's values in its column order, JSONB as JSON text."""
    return [
        json.dumps(value) if name in _JSONB and value is not None else value
        for name, value in row.items()
    ]


def columns_of(record: asyncpg.Record) -> dict[str, Any]:
    return dict(record.items())


def new_audit(row: Mapping[str, Any], **returned: Any) -> dict[str, Any]:
    """Every column of a just-inserted audit: its row, what the INSERT returned, NULLs."""
    return {**dict.fromkeys(COLUMNS), **row, **returned}
