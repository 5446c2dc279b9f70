"""Optional bearer-key access control (off unless `API_KEYS` is set).

The original specification makes every endpoint public, so that stays the
default. With `API_KEYS` set, every route but `/health/*` and the docs wants
`Authorization: Bearer <one of the keys>`. Keys are compared in constant time,
each against the presented one, so the time taken says nothing about which
key nearly matched.
"""

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.deps import SettingsDep
from shared.errors import AppError

bearer = HTTPBearer(auto_error=False, description="One of the keys in `API_KEYS`.")


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"
    title = "Unauthorized"


def _matches(presented: str, keys: list[str]) -> bool:
    # Every key is compared, so the time taken does not depend on which one matched.
    results = [hmac.compare_digest(presented.encode(), key.encode()) for key in keys]
    return any(results)


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> None:
    if not settings.api_keys:
        return
    if credentials is None or not _matches(credentials.credentials, settings.api_keys):
        raise Unauthorized(
            "This API needs `Authorization: Bearer <key>` with one of its API keys.",
        )
