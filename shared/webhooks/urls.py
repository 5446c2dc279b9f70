"""What a `callback_url` must look like, whatever the deployment: the request schemas'.

An absolute `https` or `http` URL of at most 2,000 characters, with a host, without
credentials (a receiver checks the signature instead; a token may go in the path or the
query) and without whitespace or control characters. Whether `http` is allowed, and
where the host may be, are the deployment's: shared/webhooks/callbacks.py.
"""

from typing import Annotated
from urllib.parse import urlsplit

from pydantic import AfterValidator, Field
from yarl import URL

MAX_URL_CHARS = 2000
SCHEMES = ("https", "http")
EXAMPLE = "https://hooks.example.com/auditq"


def parse(value: str) -> URL:
    """The URL of a well-formed callback; `ValueError` says what to fix in another."""
    if any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("must not contain whitespace or control characters")
    try:
        url = URL(value)
    except ValueError as exc:
        raise ValueError(f"is not a valid URL ({exc})") from None
    if url.scheme not in SCHEMES or not url.is_absolute():
        raise ValueError(f"must be an absolute https URL, e.g. {EXAMPLE}")
    # yarl drops an empty `user@`; the text as sent keeps it.
    if "@" in urlsplit(value).netloc or url.raw_user is not None:
        raise ValueError(
            "must not carry credentials (user:password@): receivers check the "
            "webhook-signature header instead; a token may go in the path or the query"
        )
    if not url.raw_host:
        raise ValueError(f"must name a host, e.g. {EXAMPLE}")
    return url


def _well_formed(value: str) -> str:
    parse(value)
    return value


CallbackUrl = Annotated[
    str,
    Field(
        max_length=MAX_URL_CHARS,
        description="Where auditq sends this resource's events, signed (Standard Webhooks): "
        "https (http only where the deployment allows private callbacks), at most 2,000 "
        "characters, no credentials. See the README's Webhooks section.",
        examples=[EXAMPLE],
    ),
    AfterValidator(_well_formed),
]
