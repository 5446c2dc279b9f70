"""Who a request acts for: `AUTH=none` (the default) or a Bearer key (`AUTH=keys`).

With `AUTH=none` every request is an admin of tenant `default`, which owns everything
(shared/tenants/caller.py). With `AUTH=keys` (implied by `API_KEYS`) every route but
`/health/*` and the docs wants `Authorization: Bearer <key>`: a key of
`auditq key create`, looked up by its SHA-256 in the process's directory
(shared/tenants/directory.py, emptied whenever a key or tenant changes), or one of
`API_KEYS`, admin keys of `default` kept outside the database. Keys are compared in
constant time. A missing, unknown or revoked key is a 401 `unauthorized`.

Every request event logs the caller's tenant and at most its key's display prefix.
"""

import hmac
from typing import Annotated

import structlog
from fastapi import Depends, Request

from shared.config import Settings
from shared.errors import AppError
from shared.tenants import keys
from shared.tenants.caller import DEFAULT_TENANT, PUBLIC, Caller, Role
from shared.tenants.directory import Directory

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


async def authenticate(request: Request) -> Caller:
    """The caller of this request; 401 without a valid key where keys are needed."""
    settings: Settings = request.app.state.settings
    if settings.uses_keys:
        caller = await _caller_of(request, settings)
    else:
        caller = PUBLIC
    if caller.key_prefix is None:
        structlog.contextvars.bind_contextvars(tenant=caller.tenant)
    else:
        structlog.contextvars.bind_contextvars(tenant=caller.tenant, key=caller.key_prefix)
    return caller


async def _caller_of(request: Request, settings: Settings) -> Caller:
    presented = _bearer_token(request)
    if presented is None:
        raise _unauthorized("This API needs `Authorization: Bearer <key>`.")
    # A refused key's prefix tells ops which one a client still sends; never more of it.
    structlog.contextvars.bind_contextvars(key=keys.log_prefix(presented))
    if settings.api_keys and _is_one_of(presented, settings.api_keys):
        return Caller(DEFAULT_TENANT, Role.ADMIN, key_prefix=keys.log_prefix(presented))
    directory: Directory = request.app.state.directory
    digest = keys.digest(presented)
    key = await directory.key(digest)
    if key is None or not keys.matches(digest, key.secret_hash):
        raise _unauthorized("This key is unknown or has been revoked.")
    await directory.note_use(key)
    return Caller(key.tenant, key.role, key_prefix=key.prefix)


def _bearer_token(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _is_one_of(presented: str, candidates: list[str]) -> bool:
    # Every key is compared, so the time taken does not depend on which one matched.
    results = [hmac.compare_digest(presented.encode(), key.encode()) for key in candidates]
    return any(results)


def _unauthorized(detail: str) -> Unauthorized:
    return Unauthorized(detail, headers=_CHALLENGE)


CurrentCaller = Annotated[Caller, Depends(authenticate)]
