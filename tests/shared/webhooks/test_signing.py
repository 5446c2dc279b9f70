"""Signatures as the Standard Webhooks specification has them, checked by its library."""

import base64
import time

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from shared.webhooks.signing import InvalidSecret, new_secret, secret_key, signature_headers

BODY = b'{"type":"audit.succeeded","timestamp":"2026-12-05T10:00:00Z","data":{"id":"x"}}'


def signed(secret: str, *, body: bytes = BODY, event_id: str = "evt-1") -> dict[str, str]:
    return signature_headers(
        secret_key(secret), event_id=event_id, timestamp=int(time.time()), body=body
    )


def test_the_standard_library_verifies_our_signature() -> None:
    secret = new_secret()

    payload = Webhook(secret).verify(BODY, signed(secret))

    assert payload["type"] == "audit.succeeded"


def test_another_secret_an_altered_body_or_another_id_fail_verification() -> None:
    secret = new_secret()
    headers = signed(secret)

    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(BODY, headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY.replace(b"succeeded", b"failed"), headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(BODY, {**headers, "webhook-id": "evt-2"})


def test_the_headers_are_the_three_of_the_specification() -> None:
    headers = signed(new_secret(), event_id="evt-9")

    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert headers["webhook-id"] == "evt-9"
    assert abs(int(headers["webhook-timestamp"]) - time.time()) < 5
    version, signature = headers["webhook-signature"].split(",")
    assert version == "v1"
    assert len(base64.b64decode(signature)) == 32  # HMAC-SHA256


def test_a_secret_is_whsec_and_base64_of_24_to_64_bytes() -> None:
    key = bytes(range(32))
    padded = "whsec_" + base64.b64encode(key).decode()

    assert secret_key(padded) == key
    assert secret_key(padded.rstrip("=")) == key  # unpadded, as the libraries accept
    assert len(secret_key(new_secret())) == 32
    for bad, says in [
        ("abc", "starts with 'whsec_'"),
        ("whsec_***", "base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "24 to 64 bytes, not 5"),
        ("whsec_" + base64.b64encode(bytes(65)).decode(), "not 65"),
    ]:
        with pytest.raises(InvalidSecret, match=says):
            secret_key(bad)
