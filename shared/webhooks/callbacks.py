"""A `callback_url` checked at submit, against the deployment: where it may point, and
whether its events can be signed.

- `http` only where `WEBHOOK_ALLOW_PRIVATE=true`: events carry audit results.
- The tenant must have a signing secret (its own, or WEBHOOK_SECRET): an unsigned event
  would be worthless to a receiver that checks, and dangerous to one that does not. So a
  deployment without one refuses callbacks (`webhooks_not_configured`) rather than make
  up a secret nobody knows.
- The host must be public (`callback_url_not_allowed`, shared/webhooks/addresses.py),
  which is checked again at every delivery.

The checks run before the submission takes a database connection: a name's resolution
may take a while.
"""

from typing import Any

from shared.audits.limits import Loc, SubmissionInvalid
from shared.errors import InvalidRequest
from shared.webhooks import urls
from shared.webhooks.addresses import CallbackPolicy, CallbackRefused

LOC: Loc = ("body", "callback_url")


class CallbackUrlNotAllowed(SubmissionInvalid):
    """The `callback_url`'s host is, or resolves to, a loopback, private, link-local,
    multicast or reserved address, or does not resolve."""

    code = "callback_url_not_allowed"
    title = "Callback URL not allowed"


class WebhooksNotConfigured(InvalidRequest):
    """A `callback_url` was sent, but the tenant has no secret to sign webhooks with
    (WEBHOOK_SECRET, or `auditq tenant set NAME --webhook-secret`)."""

    code = "webhooks_not_configured"
    title = "Webhooks not configured"


def _issue(msg: str, kind: str) -> dict[str, Any]:
    return {"loc": list(LOC), "msg": msg, "type": kind}


async def check(url: str | None, *, policy: CallbackPolicy, can_sign: bool, tenant: str) -> None:
    """Refuse a `callback_url` this deployment would not call, or could not sign for."""
    if url is None:
        return
    parsed = urls.parse(url)  # well-formed: the request schema checked it
    if parsed.scheme != "https" and not policy.allow_private:
        msg = "must be https (http only where WEBHOOK_ALLOW_PRIVATE=true)"
        raise SubmissionInvalid([_issue(msg, "value_error")])
    if not can_sign:
        raise WebhooksNotConfigured(
            f"Tenant {tenant!r} has no secret to sign webhooks with: ops set WEBHOOK_SECRET, "
            f"or `auditq tenant set {tenant} --webhook-secret whsec_…`. Submit without "
            "`callback_url` meanwhile."
        )
    if policy.allow_private:
        return
    host, port = parsed.raw_host, parsed.port
    assert host is not None, "the request schema checked it"
    try:
        await policy.addresses(host, port or 443)
    except CallbackRefused as refused:
        raise CallbackUrlNotAllowed([_issue(str(refused), CallbackUrlNotAllowed.code)]) from None
