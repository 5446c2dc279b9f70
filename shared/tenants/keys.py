"""API keys: `aq_` and 43 URL-safe random characters, stored as their SHA-256 only.

A key is looked up by its digest. The digest of a presented key is then compared with
the stored one in constant time (`hmac.compare_digest`), so no timing tells how much
of a guess was right, whatever the index or cache did to find the row.
"""

import hashlib
import hmac
import secrets

KEY_PREFIX = "aq_"
# `aq_` and 8 characters: enough to tell keys apart in a list, useless to guess the rest.
DISPLAY_CHARS = len(KEY_PREFIX) + 8
_RANDOM_BYTES = 32  # 43 URL-safe characters


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(_RANDOM_BYTES)


def digest(key: str) -> str:
    """The SHA-256 of a key, in hex: what the `api_key` table keeps."""
    return hashlib.sha256(key.encode()).hexdigest()


def display_prefix(key: str) -> str:
    return key[:DISPLAY_CHARS]


def log_prefix(presented: str) -> str:
    """What logs may show of a presented key: its display prefix, and never more than a
    third of it (a short key of `API_KEYS`, or a secret sent by mistake)."""
    return presented[: min(DISPLAY_CHARS, len(presented) // 3)]


def matches(presented_digest: str, stored_digest: str) -> bool:
    return hmac.compare_digest(presented_digest.encode(), stored_digest.encode())


def looks_like_key(text: str) -> bool:
    """A whole key rather than a prefix of one (for `auditq key revoke`)."""
    return text.startswith(KEY_PREFIX) and len(text) > DISPLAY_CHARS
