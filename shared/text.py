"""Checks on text that PostgreSQL cannot store or that clients should never send."""

import json
from typing import Any


def reject_nul(value: str) -> str:
    """PostgreSQL `text` and `jsonb` cannot hold NUL, so it is refused at the door."""
    if "\x00" in value:
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


def json_size(value: Any) -> int:
    """Bytes of the compact UTF-8 JSON encoding, the size the limits speak of."""
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode())
