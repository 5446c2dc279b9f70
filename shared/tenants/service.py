"""What ops do with tenants and keys (`auditq key …`, `auditq tenant …`).

Functions take a `Statements` inside a transaction and never commit; every change
notifies the API processes as it commits (shared/tenants/repository.py).
"""

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal

from shared.db import Statements
from shared.errors import AppError, NotFound
from shared.tenants import keys
from shared.tenants import repository as tenants
from shared.tenants.caller import TENANT_NAME, Role
from shared.tenants.repository import KeyRow, TenantRow


class InvalidTenantName(AppError):
    code = "invalid_tenant_name"
    title = "Invalid tenant name"


class KeyNotFound(NotFound):
    code = "key_not_found"
    title = "Key not found"


class AmbiguousKeyPrefix(AppError):
    code = "ambiguous_key_prefix"
    title = "Several keys have this prefix"


@dataclass(frozen=True)
class NewKey:
    """A key as created: the row, and the key itself, shown this once."""

    row: KeyRow
    secret: str


def check_tenant_name(name: str) -> str:
    if not TENANT_NAME.match(name):
        raise InvalidTenantName(
            f"{name!r} is not a tenant name: 1 to 64 of a-z, 0-9, '.', '_' and '-', "
            "starting with a letter or digit."
        )
    return name


async def create_key(conn: Statements, *, tenant: str, label: str | None, role: Role) -> NewKey:
    """A new key of `tenant` (created with its first key); only its digest is stored."""
    secret = keys.new_key()
    row = await tenants.insert_key(
        conn,
        tenant=check_tenant_name(tenant),
        label=label,
        prefix=keys.display_prefix(secret),
        secret_hash=keys.digest(secret),
        role=role,
    )
    return NewKey(row=row, secret=secret)


async def revoke_key(conn: Statements, key_or_prefix: str) -> KeyRow:
    """Revoke the key given whole, or the one unrevoked key with this display prefix."""
    if keys.looks_like_key(key_or_prefix):
        found = await tenants.keys_matching(conn, secret_hash=keys.digest(key_or_prefix))
    else:
        found = await tenants.keys_matching(conn, prefix=key_or_prefix)
        found = [key for key in found if key.revoked_at is None] or found
    if not found:
        raise KeyNotFound(f"No key is {key_or_prefix!r} or has it as its prefix.")
    if len(found) > 1:
        raise AmbiguousKeyPrefix(
            f"{len(found)} keys have the prefix {key_or_prefix!r}: revoke by the whole key."
        )
    return await tenants.revoke(conn, found[0].id)


async def set_tenant(
    conn: Statements, name: str, changes: Mapping[str, int | str | Decimal | None]
) -> TenantRow:
    """Create the tenant if need be and change its quotas, weight or webhook secret (None:
    the setting), or its monthly budget (None: no budget)."""
    return await tenants.update_tenant(conn, check_tenant_name(name), changes)


async def weights(conn: Statements) -> dict[str, int]:
    """Each tenant's weight, the share of the workers it gets against the others."""
    return {tenant.name: tenant.weight for tenant in await tenants.all_tenants(conn)}
