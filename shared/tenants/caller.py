"""Who a request acts for: a tenant, and whether it may look beyond it.

Every resource belongs to one tenant. A member key reads and writes its own tenant's
only; an admin key creates in its own tenant and reads, cancels and retries in every
tenant. With `AUTH=none` every request is an admin of `default`, which owns everything.
"""

import re
from dataclasses import dataclass
from enum import StrEnum

DEFAULT_TENANT = "default"
# Lower case, digits, `.`, `_` and `-`; it shows in URLs (`?tenant=`) and in logs.
TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


class Role(StrEnum):
    MEMBER = "member"
    ADMIN = "admin"


@dataclass(frozen=True, slots=True)
class Caller:
    tenant: str
    role: Role
    # At most this much of a key reaches the logs.
    key_prefix: str | None = None

    @property
    def is_admin(self) -> bool:
        return self.role is Role.ADMIN

    @property
    def scope(self) -> str | None:
        """The tenant whose resources it reaches by id; None: every tenant's."""
        return None if self.is_admin else self.tenant

    def listing(self, wanted: str | None) -> str | None:
        """The tenant a list shows: a member's own, whatever it asks; an admin's choice."""
        return wanted if self.is_admin else self.tenant

    def rubrics_of(self, wanted: str | None) -> str:
        """Rubric names are per tenant: a member's own, an admin's own unless it names one."""
        return (wanted or self.tenant) if self.is_admin else self.tenant


PUBLIC = Caller(tenant=DEFAULT_TENANT, role=Role.ADMIN)
