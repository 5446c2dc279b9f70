"""Keyset pagination on `(created_at DESC, id DESC)` with opaque cursors.

A cursor is the last row's keyset plus a short checksum, base64url-encoded:
clients must treat it as opaque, and one that was altered is refused (422)
instead of silently starting somewhere else. Walking every page returns every
row exactly once, even while rows are inserted, because each page starts
strictly after the previous page's last row.
"""

import base64
import binascii
import hashlib
from datetime import datetime
from typing import Any, TypeVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.sql import Select

from shared.errors import InvalidRequest

DEFAULT_LIMIT = 20
MAX_LIMIT = 50

S = TypeVar("S", bound=Select[Any])


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"
    title = "Invalid cursor"


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def encode_cursor(created_at: datetime, row_id: UUID) -> str:
    payload = f"{created_at.isoformat()}|{row_id}"
    token = f"{payload}|{_checksum(payload)}"
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        created, row_id, checksum = token.split("|")
        if checksum != _checksum(f"{created}|{row_id}"):
            raise ValueError("checksum mismatch")
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment, UUID(row_id)
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise InvalidCursor(
            "`cursor` is not one this API issued; pass `next_cursor` from the previous page "
            "unchanged, or omit it to start from the newest"
        ) from exc


def keyset_page(stmt: S, *, created_at: Any, row_id: Any, limit: int, cursor: str | None) -> S:
    """Order newest first and start after `cursor`; fetches one row more than `limit`."""
    if cursor is not None:
        after_created, after_id = decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(created_at, row_id) < sa.tuple_(after_created, after_id))
    return stmt.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
