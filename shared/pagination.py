"""Keyset pagination on `(created_at DESC, id DESC)` with opaque cursors.

A cursor is the last row's key plus a short checksum, base64url-encoded:
clients must treat it as opaque, and one that was altered is refused (422)
instead of silently starting somewhere else. Walking every page returns every
row exactly once, even while rows are inserted, because each page starts
strictly after the previous page's last row.
"""

import base64
import binascii
import hashlib
import re
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.sql import Select

from shared.errors import InvalidRequest

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")

DEFAULT_LIMIT = 20
MAX_LIMIT = 50

S = TypeVar("S", bound=Select[Any])
R = TypeVar("R")


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"
    title = "Invalid cursor"


def _checksum(payload: str) -> str:
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def _encode(*parts: str) -> str:
    payload = "|".join(parts)
    token = f"{payload}|{_checksum(payload)}"
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


def _decode(cursor: str, *, parts: int) -> list[str]:
    """The parts of a cursor this API issued; ValueError for anything else."""
    token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    *values, checksum = token.split("|")
    if len(values) != parts or checksum != _checksum("|".join(values)):
        raise ValueError("not an issued cursor")
    return values


def _invalid(exc: Exception) -> InvalidCursor:
    error = InvalidCursor(
        "`cursor` is not one this API issued; pass `next_cursor` from the previous page "
        "unchanged, or omit it to start from the first page"
    )
    error.__cause__ = exc
    return error


def encode_cursor(created_at: datetime, row_id: UUID) -> str:
    return _encode(created_at.isoformat(), str(row_id))


def decode_cursor(cursor: str) -> tuple[datetime, UUID]:
    try:
        created, row_id = _decode(cursor, parts=2)
        moment = datetime.fromisoformat(created)
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        # Issued cursors are in UTC already; a forged one near year 1 or 9999 may have
        # no UTC twin, which would otherwise only surface in the driver as a 500.
        return moment.astimezone(UTC), UUID(row_id)
    except (ValueError, OverflowError, UnicodeDecodeError, binascii.Error) as exc:
        raise _invalid(exc) from exc


def encode_name_cursor(name: str) -> str:
    return _encode(name)


def decode_name_cursor(cursor: str) -> str:
    """The name a page of names starts after; only a slug, since names are slugs."""
    try:
        (name,) = _decode(cursor, parts=1)
        if not _SLUG.match(name):
            raise ValueError("not a slug")
    except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
        raise _invalid(exc) from exc
    return name


def split_page(
    rows: Sequence[R], *, limit: int, cursor_of: Callable[[R], str]
) -> tuple[list[R], str | None]:
    """A page of `limit` rows out of `limit + 1` fetched, and the cursor of the next one."""
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), cursor_of(rows[limit - 1])


def keyset_page(stmt: S, *, created_at: Any, row_id: Any, limit: int, cursor: str | None) -> S:
    """Order newest first and start after `cursor`; fetches one row more than `limit`."""
    if cursor is not None:
        after_created, after_id = decode_cursor(cursor)
        stmt = stmt.where(sa.tuple_(created_at, row_id) < sa.tuple_(after_created, after_id))
    return stmt.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
