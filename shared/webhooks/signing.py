"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

A secret is `whsec_` and the base64 of 24 to 64 random bytes. Each try of an event is
signed afresh: `webhook-signature: v1,<base64 HMAC-SHA256 of "id.timestamp.body">`, with
the event's id (the same on every try) and the try's own timestamp, which receivers
hold to a few minutes of their clock. tests/shared/webhooks check it with the
`standardwebhooks` library.
"""

import base64
import binascii
import hashlib
import hmac
import secrets

PREFIX = "whsec_"
MIN_KEY_BYTES = 24
MAX_KEY_BYTES = 64


class InvalidSecret(ValueError):
    pass


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_…` secret; `InvalidSecret` says what is wrong with one."""
    if not secret.startswith(PREFIX):
        raise InvalidSecret(f"a webhook secret starts with {PREFIX!r}")
    encoded = secret.removeprefix(PREFIX)
    try:  # padded or not, as the standard's libraries accept it
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise InvalidSecret(f"a webhook secret is {PREFIX!r} and base64") from None
    if not MIN_KEY_BYTES <= len(key) <= MAX_KEY_BYTES:
        raise InvalidSecret(
            f"a webhook secret holds {MIN_KEY_BYTES} to {MAX_KEY_BYTES} bytes, not {len(key)}"
        )
    return key


def new_secret() -> str:
    """A fresh secret of 32 random bytes."""
    return PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def signature_headers(key: bytes, *, event_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers that let a receiver check `body` came from us, unaltered."""
    signed = f"{event_id}.{timestamp}.".encode() + body
    digest = hmac.new(key, signed, hashlib.sha256).digest()
    return {
        "webhook-id": event_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": "v1," + base64.b64encode(digest).decode(),
    }
