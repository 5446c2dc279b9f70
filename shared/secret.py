"""The process's secret key (`SECRET_KEY`), which signs what the API hands out (cursors)."""

import secrets

import structlog

from shared.config import Settings

log = structlog.get_logger("auditq.secret")


def secret_key(settings: Settings) -> bytes:
    """`SECRET_KEY`'s bytes; without it, a random key of this process's own, with a warning.

    Refusing to start would break every deployment that predates the setting; a random
    key is safe (nobody can forge with it) and only costs continuity: cursors issued by
    one process are refused (422 `invalid_cursor`) by another, and after a restart.
    """
    if settings.secret_key is not None:
        return settings.secret_key.get_secret_value().encode()
    log.warning(
        "secret_key_missing",
        detail="SECRET_KEY is unset: cursors are signed with a random key of this process, "
        "so they do not survive a restart or work across API processes; set SECRET_KEY",
    )
    return secrets.token_bytes(32)
