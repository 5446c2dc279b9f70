"""One try of a webhook: a signed POST, to the addresses just checked, without redirects.

The client's resolver is the SSRF check (shared/webhooks/addresses.py): aiohttp connects
to the addresses it returns, and only those, while the request keeps the URL's host for
`Host` and TLS (SNI and the certificate's name). A host that resolves elsewhere between
submit and delivery, or between two tries, is checked again each time (no DNS cache),
so rebinding a name to an internal address gains nothing. A host that aiohttp takes for
an address skips resolvers: it is checked before the request. No proxy from the
environment is used (it would connect for us), and a redirect is a failed try.
"""

import socket
import time
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from shared.webhooks.addresses import CallbackPolicy, CallbackRefused, literal_address

TRY_TIMEOUT_S = 10.0
USER_AGENT = "auditq-webhooks"
# Enough of a failure's text to tell what happened, without storing a stranger's page.
MAX_ERROR_CHARS = 300


@dataclass(frozen=True, slots=True)
class TryOutcome:
    """What a try got: the receiver's status code, or why there was none."""

    status_code: int | None
    error: str | None
    duration_ms: int

    @property
    def delivered(self) -> bool:
        return self.status_code is not None and 200 <= self.status_code < 300


class CheckedResolver(AbstractResolver):
    """aiohttp's resolver: a callback host's allowed addresses, or `CallbackRefused`."""

    def __init__(self, policy: CallbackPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        return [
            ResolveResult(
                hostname=host,
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in await self._policy.addresses(host, port)
        ]

    async def close(self) -> None:
        pass


def _takes_for_an_address(host: str) -> bool:
    """Whether aiohttp connects to `host` without asking the resolver (its own test)."""
    return ":" in host or host.replace(".", "").isdigit() or literal_address(host) is not None


class Sender:
    """Sends the tries of one process, `concurrency` connections at most."""

    def __init__(
        self, policy: CallbackPolicy, *, concurrency: int, timeout_s: float = TRY_TIMEOUT_S
    ) -> None:
        self._policy = policy
        self._timeout_s = timeout_s
        connector = aiohttp.TCPConnector(
            resolver=CheckedResolver(policy), use_dns_cache=False, limit=concurrency
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            headers={"User-Agent": USER_AGENT, "Content-Type": "application/json"},
            trust_env=False,
        )

    async def close(self) -> None:
        await self._session.close()

    async def post(self, url: str, *, body: bytes, headers: dict[str, str]) -> TryOutcome:
        started = time.monotonic()
        status_code, error = None, None
        try:
            status_code = await self._post(URL(url), body=body, headers=headers)
            if 300 <= status_code < 400:
                error = "redirect not followed"
        except CallbackRefused as refused:
            error = f"callback_url_not_allowed: {refused}"
        except aiohttp.ClientConnectorError as exc:
            cause = exc.__cause__
            error = (
                f"callback_url_not_allowed: {cause}"
                if isinstance(cause, CallbackRefused)
                else f"connection failed: {exc.os_error}"
            )
        except TimeoutError:
            error = f"no answer within {self._timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            error = f"{type(exc).__name__}: {exc}"
        duration_ms = round((time.monotonic() - started) * 1000)
        return TryOutcome(status_code, error and error[:MAX_ERROR_CHARS], duration_ms)

    async def _post(self, url: URL, *, body: bytes, headers: dict[str, str]) -> int:
        host = url.raw_host or ""
        if _takes_for_an_address(host):
            await self._policy.addresses(host, url.port or 0)
        async with self._session.post(
            url, data=body, headers=headers, allow_redirects=False
        ) as response:
            return response.status
