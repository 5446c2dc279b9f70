"""Keyset pagination on `(created_at DESC, id DESC)` with opaque, signed cursors.

A cursor is the last row's key and an HMAC, base64url-encoded. The HMAC is keyed
with `SECRET_KEY` and covers the listing the cursor pages through (the route and
its filters) as well as the key: a cursor that was altered, forged, or carried to
another route or other filters is refused (422 `invalid_cursor`) instead of
silently starting somewhere else. Walking every page returns every row exactly
once, even while rows are inserted, because each page starts strictly after the
previous page's last row.
"""

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.sql import Select

from shared.errors import InvalidRequest

_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# 128 bits of HMAC-SHA256: forging one is out of reach, and cursors stay short.
_MAC_HEX_DIGITS = 32

DEFAULT_LIMIT = 20
MAX_LIMIT = 50

S = TypeVar("S", bound=Select[Any])
R = TypeVar("R")


class InvalidCursor(InvalidRequest):
    code = "invalid_cursor"
    title = "Invalid cursor"


def listing(route: str, filters: Mapping[str, Any] | None = None) -> str:
    """What a cursor is bound to: the route, and its filters in one canonical spelling.

    Filters a client leaves out are left out here too, and repeated values are sorted,
    so `?status=a&status=b` and `?status=b&status=a` page through the same listing.
    """
    parts = [
        f"{name}={_canonical(value)}"
        for name, value in sorted((filters or {}).items())
        if value is not None and value != () and value != []
    ]
    return "?".join([route, "&".join(parts)]) if parts else route


def _canonical(value: Any) -> str:
    if isinstance(value, (list, tuple, set, frozenset)):
        return ",".join(sorted(str(item) for item in value))
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


@dataclass(frozen=True)
class Cursors:
    """Issues and reads the cursors of one listing, signed with the process's secret key."""

    key: bytes
    listing: str

    def keyset(self, created_at: datetime, row_id: UUID) -> str:
        """The cursor of a page that starts after this `(created_at, id)`."""
        return self._encode(created_at.isoformat(), str(row_id))

    def read_keyset(self, cursor: str) -> tuple[datetime, UUID]:
        try:
            created, row_id = self._decode(cursor, parts=2)
            moment = datetime.fromisoformat(created)
            if moment.tzinfo is None:
                raise ValueError("naive timestamp")
            # Issued cursors are in UTC already; a key near year 1 or 9999 may have no
            # UTC twin, which would otherwise only surface in the driver as a 500.
            return moment.astimezone(UTC), UUID(row_id)
        except (ValueError, OverflowError, UnicodeDecodeError, binascii.Error) as exc:
            raise _invalid(exc) from exc

    def name(self, name: str) -> str:
        """The cursor of a page of names that starts after `name`."""
        return self._encode(name)

    def read_name(self, cursor: str) -> str:
        """The name a page of names starts after; only a slug, since names are slugs."""
        try:
            (name,) = self._decode(cursor, parts=1)
            if not _SLUG.match(name):
                raise ValueError("not a slug")
        except (ValueError, UnicodeDecodeError, binascii.Error) as exc:
            raise _invalid(exc) from exc
        return name

    def _mac(self, payload: str) -> str:
        message = f"{self.listing}\n{payload}".encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()[:_MAC_HEX_DIGITS]

    def _encode(self, *parts: str) -> str:
        payload = "|".join(parts)
        token = f"{payload}|{self._mac(payload)}"
        return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")

    def _decode(self, cursor: str, *, parts: int) -> list[str]:
        """The parts of a cursor issued for this listing; ValueError for anything else."""
        token = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        *values, mac = token.split("|")
        expected = self._mac("|".join(values)).encode()
        # As bytes: compare_digest refuses `str` with non-ASCII characters (a TypeError).
        if len(values) != parts or not hmac.compare_digest(mac.encode(), expected):
            raise ValueError("not a cursor issued for this listing")
        return values


def _invalid(exc: Exception) -> InvalidCursor:
    error = InvalidCursor(
        "`cursor` is not one this API issued for this listing; pass `next_cursor` from the "
        "previous page unchanged, with the same filters, or omit it to start from the first page"
    )
    error.__cause__ = exc
    return error


def split_page(
    rows: Sequence[R], *, limit: int, cursor_of: Callable[[R], str]
) -> tuple[list[R], str | None]:
    """A page of `limit` rows out of `limit + 1` fetched, and the cursor of the next one."""
    if len(rows) <= limit:
        return list(rows), None
    return list(rows[:limit]), cursor_of(rows[limit - 1])


def keyset_page(
    stmt: S, *, created_at: Any, row_id: Any, limit: int, cursor: str | None, cursors: Cursors
) -> S:
    """Order newest first and start after `cursor`; fetches one row more than `limit`."""
    if cursor is not None:
        after_created, after_id = cursors.read_keyset(cursor)
        stmt = stmt.where(sa.tuple_(created_at, row_id) < sa.tuple_(after_created, after_id))
    return stmt.order_by(created_at.desc(), row_id.desc()).limit(limit + 1)
