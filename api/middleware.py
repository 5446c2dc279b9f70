"""Pure ASGI middleware: request ids and access events, the body size limit, and 500s.

Pure ASGI rather than `BaseHTTPMiddleware`: they sit on every request, and the
latter costs an extra task and stream copy per call.
"""

import random
import re
import time

import structlog
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems

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


class RequestContext:
    """Binds `request_id` (from X-Request-ID or new) to the logs, echoes it, logs the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

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
        status = 500

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            log.info(
                "request",
                method=scope["method"],
                path=scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
            )


class TrustedHosts:
    """Answers only requests whose `Host` is in `ALLOWED_HOSTS` (`*.example.com` allowed).

    What a client puts in `Host` must not reach anything that builds a URL from it.
    The health probes are answered whatever the `Host`: load balancers and orchestrators
    probe by address.
    """

    def __init__(self, app: ASGIApp, allowed: list[str], exempt_prefix: str) -> None:
        self.app = app
        self.any = "*" in allowed
        self.exact = {host.lower() for host in allowed if not host.startswith("*.")}
        self.suffixes = tuple(host[1:].lower() for host in allowed if host.startswith("*."))
        self.exempt_prefix = exempt_prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.any or scope["type"] != "http" or scope["path"].startswith(self.exempt_prefix):
            await self.app(scope, receive, send)
            return
        host = _host_name(_header(scope, b"host") or "")
        if host in self.exact or host.endswith(self.suffixes):
            await self.app(scope, receive, send)
            return
        response = problems.problem_response(
            status=400,
            code="invalid_host",
            title="Invalid host",
            detail="The Host header names no host this API serves (ALLOWED_HOSTS).",
        )
        await response(scope, receive, send)


def _host_name(host: str) -> str:
    """`Host` without its port: `example.com:8000` -> `example.com`, `[::1]:80` -> `[::1]`."""
    if host.startswith("["):
        return host[: host.find("]") + 1].lower()
    return host.rsplit(":", 1)[0].lower()


class BodyLimit:
    """Refuses bodies over `max_bytes` with 413 before they are read in full or parsed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            # Answered here rather than on the first read: a route that reads no body would
            # meet the refusal in a streaming response's disconnect watch, mid-response.
            response = await problems.http_error(Request(scope), self._too_large())
            await response(scope, receive, send)
            return
        await self.app(scope, self._counting(receive), send)

    def _too_large(self) -> HTTPException:
        # An HTTPException, because FastAPI re-raises those from body reading
        # (anything else becomes a generic 400) and renders them as `payload_too_large`.
        return HTTPException(
            413,
            f"The request body is over the limit of {self.max_bytes} bytes (MAX_BODY_BYTES); "
            "send fewer or smaller audits per request.",
        )

    def _counting(self, receive: Receive) -> Receive:
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise self._too_large()
            return message

        return counted


class InternalErrors:
    """Answers an error no handler took with the 500 problem, from inside the other middleware.

    Starlette would answer it from its outermost layer, where CORS and the request id
    never see the response: a browser would report a CORS failure instead of the
    problem. Once a response has started it is too late to answer: re-raised, and the
    server drops the connection.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_noting_start(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_noting_start)
        except Exception:
            if started:
                raise
            errors_log.exception("unhandled_error", method=scope["method"], path=scope["path"])
            await problems.internal_error_response()(scope, receive, send)
