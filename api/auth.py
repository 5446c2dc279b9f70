"""Who a request acts for: `AUTH=none` (the default) or a Bearer key (`AUTH=keys`).

With `AUTH=none` every request is an admin of tenant `default`, which owns everything
(shared/tenants/caller.py). With `AUTH=keys` (implied by `API_KEYS`) every route but
`/health/*` and the docs wants `Authorization: Bearer <key>`: a key of
`auditq key create`, looked up by its SHA-256 in the process's directory
(shared/tenants/directory.py, emptied whenever a key or tenant changes), or one of
`API_KEYS`, admin keys of `default` kept outside the database. Keys are compared in
constant time. A missing, unknown or revoked key is a 401 `unauthorized`; a member key
on an admin's route (`GET /api/v1/status`) is a 403 `forbidden`.

The dashboard (api/dashboard/pages.py) keeps its admin key in the HttpOnly cookie
`DASHBOARD_COOKIE`, which a `GET` or `HEAD` without an `Authorization` header presents
instead: the page's script never holds the key, and it never shows in a URL. Only reads
take it: a write with it would be a request a browser sends on its own (CSRF), which
`SameSite=Strict` alone should not be trusted to stop.

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


DASHBOARD_COOKIE = "auditq_key"
_COOKIE_METHODS = ("GET", "HEAD")


class Unauthorized(AppError):
    """No key, or a key that is unknown or revoked."""

    status = 401
    code = "unauthorized"
    title = "Unauthorized"


class Forbidden(AppError):
    """A valid key that may not do this: the route is an admin key's."""

    status = 403
    code = "forbidden"
    title = "Forbidden"


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


async def authenticate_admin(request: Request) -> Caller:
    """The caller of this request, if an admin; 403 for a member's key."""
    caller = await authenticate(request)
    if not caller.is_admin:
        raise Forbidden(f"Only an admin key may do this; this one is a member of {caller.tenant}.")
    return caller


async def _caller_of(request: Request, settings: Settings) -> Caller:
    presented = _presented_key(request)
    if presented is None:
        raise _unauthorized("This API needs `Authorization: Bearer <key>`.")
    return await caller_of_key(request, presented, settings)


async def caller_of_key(request: Request, presented: str, settings: Settings) -> Caller:
    """Whose key `presented` is; 401 when it is unknown or revoked."""
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


def _presented_key(request: Request) -> str | None:
    """The bearer token; else, on a read, the dashboard's cookie."""
    token = _bearer_token(request)
    if token is None and request.method in _COOKIE_METHODS:
        token = request.cookies.get(DASHBOARD_COOKIE) or None
    return token


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
AdminCaller = Annotated[Caller, Depends(authenticate_admin)]
