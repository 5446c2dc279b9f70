"""The one pure-ASGI middleware every request goes through.

In order: the request id (from X-Request-ID or new, bound to the logs and echoed), the
`Host` check, the body's declared size and the process's body budget (api/bodies.py),
then the app, whose error no handler took is answered with the 500 problem; the
request's log line last. One layer rather than one per concern, and pure ASGI rather
than `BaseHTTPMiddleware`: each layer is another call and another wrapped `send` on
every request, a tenth of a GET's CPU with five of them (bench/RESULTS.md, "Tuning").
"""

import random
import re
import time

import structlog
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.bodies import BodyBudget
from api.metrics import ApiMetrics

log = structlog.get_logger("api.request")
errors_log = structlog.get_logger("api.error")

_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _new_id() -> str:
    """32 hex digits, as `uuid4().hex`; an id, not a secret, so no system call for entropy."""
    return f"{random.getrandbits(128):032x}"


class TrustedHosts:
    """The `Host` names in `ALLOWED_HOSTS` (`*.example.com` allowed; `*` any).

    What a client puts in `Host` must not reach anything that builds a URL from it.
    The health probes and `/metrics` are answered whatever the `Host`: load balancers,
    orchestrators and Prometheus come by address.
    """

    def __init__(self, allowed: list[str], exempt_prefixes: tuple[str, ...]) -> None:
        self.any = "*" in allowed
        self.exact = {host.lower() for host in allowed if not host.startswith("*.")}
        self.suffixes = tuple(host[1:].lower() for host in allowed if host.startswith("*."))
        self.exempt_prefixes = exempt_prefixes

    def allow(self, scope: Scope) -> bool:
        if self.any or scope["path"].startswith(self.exempt_prefixes):
            return True
        host = _host_name(_header(scope, b"host") or "")
        return host in self.exact or host.endswith(self.suffixes)


def _host_name(host: str) -> str:
    """`Host` without its port: `example.com:8000` -> `example.com`, `[::1]:80` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rsplit(":", 1)[0].lower()


def _invalid_host() -> Response:
    return problems.problem_response(
        status=400,
        code="invalid_host",
        title="Invalid host",
        detail="The Host header names no host this API serves (ALLOWED_HOSTS).",
    )


class RequestGate:
    """Every HTTP request, in the order the module docstring gives."""

    def __init__(
        self, app: ASGIApp, *, hosts: TrustedHosts, bodies: BodyBudget, metrics: ApiMetrics
    ) -> None:
        self.app = app
        self.hosts = hosts
        self.bodies = bodies
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        incoming = _header(scope, b"x-request-id")
        request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else _new_id()
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status: int | None = None

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self._answer(scope, receive, send_with_id)
        except Exception:
            # Answered here, not by Starlette's outermost layer, where CORS and the request
            # id would never see the response: a browser would report a CORS failure instead
            # of the problem. Once a response has started it is too late: re-raised, and the
            # server drops the connection.
            if status is not None:
                raise
            errors_log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            await problems.internal_error_response()(scope, receive, send_with_id)
        finally:
            took_s = time.perf_counter() - started
            self.metrics.observe(scope, status or 500, took_s)
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status or 500,
                duration_ms=round(took_s * 1000, 2),
            )

    async def _answer(self, scope: Scope, receive: Receive, send: Send) -> None:
        refusal = await self._refusal(scope)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        reserved = self.bodies.reserve(scope)
        if reserved is None:
            await self.bodies.busy()(scope, receive, send)
            return
        try:
            await self.app(scope, self.bodies.reading(receive, deadline=reserved > 0), send)
        finally:
            self.bodies.release(reserved)

    async def _refusal(self, scope: Scope) -> Response | None:
        """A request refused before the app sees it: a `Host` not served, a body too large."""
        if not self.hosts.allow(scope):
            return _invalid_host()
        if self.bodies.declared_too_large(scope):
            # Answered here rather than on the first read: a route that reads no body would
            # meet the refusal in a streaming response's disconnect watch, mid-response.
            return await problems.http_error(Request(scope), self.bodies.too_large())
        return None
