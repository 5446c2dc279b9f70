"""Every statement on the `tenant` and `api_key` tables, and the typed rows they return.

Every change to either table notifies `CHANGES_CHANNEL` in its own transaction: the
API processes listen there and forget what they cached (shared/tenants/directory.py),
so a revoked key is refused from its next request on.
"""

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import datetime
from decimal import Decimal
from typing import Any, Self
from uuid import UUID, uuid4

from shared.db import Statements
from shared.tenants.caller import Role

CHANGES_CHANNEL = "auditq_tenants"
_NOTIFY = f"SELECT pg_notify('{CHANGES_CHANNEL}', '')"


@dataclass(frozen=True, slots=True)
class TenantRow:
    """One row of `tenant`: its overrides of the settings (None: the setting)."""

    name: str
    max_queued: int | None
    submit_rpm: int | None
    weight: int
    created_at: datetime
    webhook_secret: str | None = field(repr=False)  # a signing key: never in a log line
    monthly_budget_usd: Decimal | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        return cls(**record)


@dataclass(frozen=True, slots=True)
class KeyRow:
    """One row of `api_key` (tests hold it to the table): a digest, never the key."""

    id: UUID
    tenant: str
    label: str | None
    prefix: str
    secret_hash: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, record: Mapping[str, Any]) -> Self:
        return cls(**{**record, "role": Role(record["role"])})


TENANT_COLUMNS = tuple(f.name for f in fields(TenantRow))
KEY_COLUMNS = tuple(f.name for f in fields(KeyRow))
# What `tenant set` may change; the CLI names them.
SETTABLE = frozenset({"max_queued", "submit_rpm", "weight", "webhook_secret", "monthly_budget_usd"})

_TENANTS = f"SELECT {', '.join(TENANT_COLUMNS)} FROM tenant"
_TENANT = f"{_TENANTS} WHERE name = $1"
_ALL_TENANTS = f"{_TENANTS} ORDER BY name"
_ENSURE_TENANT = "INSERT INTO tenant (name) VALUES ($1) ON CONFLICT (name) DO NOTHING"
_KEYS = f"SELECT {', '.join(KEY_COLUMNS)} FROM api_key"
_INSERT_KEY = (
    "INSERT INTO api_key (id, tenant, label, prefix, secret_hash, role) "
    f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {', '.join(KEY_COLUMNS)}"
)
_ACTIVE_KEY = f"{_KEYS} WHERE secret_hash = $1 AND revoked_at IS NULL"
_KEYS_BY_HASH = f"{_KEYS} WHERE secret_hash = $1"
_KEYS_BY_PREFIX = f"{_KEYS} WHERE prefix = $1 ORDER BY created_at"
_REVOKE = (
    "UPDATE api_key SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1 "
    f"RETURNING {', '.join(KEY_COLUMNS)}"
)
_TOUCH = "UPDATE api_key SET last_used_at = now() WHERE id = $1"


async def notify_changed(conn: Statements) -> None:
    """Tell every listening API process to forget what it cached; sent on commit."""
    await conn.fetchval(_NOTIFY)


async def get_tenant(conn: Statements, name: str) -> TenantRow | None:
    record = await conn.fetchrow(_TENANT, name)
    return None if record is None else TenantRow.of(record)


async def all_tenants(conn: Statements) -> list[TenantRow]:
    return [TenantRow.of(record) for record in await conn.fetch(_ALL_TENANTS)]


async def ensure_tenant(conn: Statements, name: str) -> None:
    await conn.execute(_ENSURE_TENANT, name)


async def update_tenant(
    conn: Statements, name: str, changes: Mapping[str, int | str | Decimal | None]
) -> TenantRow:
    """Create the tenant if need be, then set `changes` (a column of `SETTABLE` each)."""
    assert changes.keys() <= SETTABLE, changes
    await ensure_tenant(conn, name)
    assignments = ", ".join(f"{column} = ${n}" for n, column in enumerate(changes, start=2))
    if assignments:
        await conn.execute(
            f"UPDATE tenant SET {assignments} WHERE name = $1", name, *changes.values()
        )
    await notify_changed(conn)
    row = await get_tenant(conn, name)
    assert row is not None, "created above, in this transaction"
    return row


async def insert_key(
    conn: Statements, *, tenant: str, label: str | None, prefix: str, secret_hash: str, role: Role
) -> KeyRow:
    """A new key of `tenant`, creating the tenant on its first key."""
    await ensure_tenant(conn, tenant)
    record = await conn.fetchrow(_INSERT_KEY, uuid4(), tenant, label, prefix, secret_hash, role)
    assert record is not None, "an INSERT … RETURNING returns its row"
    await notify_changed(conn)
    return KeyRow.of(record)


async def keys(conn: Statements, *, tenant: str | None) -> list[KeyRow]:
    """Every key, or a tenant's, oldest first; revoked ones included."""
    if tenant is None:
        records = await conn.fetch(f"{_KEYS} ORDER BY tenant, created_at")
    else:
        records = await conn.fetch(f"{_KEYS} WHERE tenant = $1 ORDER BY created_at", tenant)
    return [KeyRow.of(record) for record in records]


async def active_key(conn: Statements, secret_hash: str) -> KeyRow | None:
    """The unrevoked key with this digest, if any."""
    record = await conn.fetchrow(_ACTIVE_KEY, secret_hash)
    return None if record is None else KeyRow.of(record)


async def keys_matching(
    conn: Statements, *, secret_hash: str | None = None, prefix: str | None = None
) -> list[KeyRow]:
    """The key with this digest, or the keys with this display prefix."""
    if secret_hash is not None:
        records = await conn.fetch(_KEYS_BY_HASH, secret_hash)
    else:
        records = await conn.fetch(_KEYS_BY_PREFIX, prefix)
    return [KeyRow.of(record) for record in records]


async def revoke(conn: Statements, key_id: UUID) -> KeyRow:
    """Revoke a key (a revoked one keeps its first revocation time)."""
    record = await conn.fetchrow(_REVOKE, key_id)
    assert record is not None, f"key {key_id} vanished inside its own transaction"
    await notify_changed(conn)
    return KeyRow.of(record)


async def touch(conn: Statements, key_id: UUID) -> None:
    """Note that the key was just used."""
    await conn.execute(_TOUCH, key_id)
