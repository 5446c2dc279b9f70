"""Request bodies in flight: a budget for the process, and a deadline to read each one.

Every body an API process is reading or parsing holds its bytes, then the objects they
parse into, several times the body's size. Without a bound, a hundred concurrent 14 MiB
bodies took the process past 2 GB. The budget (`MAX_INFLIGHT_BODY_BYTES`) is counted in
declared bytes: a request is let in only if its `Content-Length` fits in what the
requests in progress leave; else it is answered 429 `server_busy` with `Retry-After`,
before a byte of its body is read. A chunked body, whose size is unknown, counts as
`MAX_BODY_BYTES`. The reservation is held until the response is sent, since the parsed
body lives as long as the request; api/memory.py then gives the memory back.

A body is copied as often as FastAPI's parsing needs and no more: Starlette joins the
chunks into one `bytes` (the chunks are freed), `json.loads` decodes it to `str`, then
parses; nothing here buffers or copies it.

A client that sends its body slowly would hold its share of the budget, and a task,
for as long as it likes: reading a body has a deadline (`REQUEST_READ_TIMEOUT_S`, from
the moment the headers were read), after which it gets 408 and the connection is closed.
"""

import asyncio

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.types import Message, Receive, Scope

from api import problems
from api.memory import MemoryReclaimer

RETRY_AFTER_S = 1
# A body sent with another method is never read by a route: nothing to bound.
_METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH"})


class BodyBudget:
    """The bodies this process reads: each within `MAX_BODY_BYTES` and its deadline, all
    within `MAX_INFLIGHT_BODY_BYTES`. Used by api/middleware.py's one middleware."""

    def __init__(self, *, budget_bytes: int, max_body_bytes: int, read_timeout_s: float) -> None:
        self.budget_bytes = budget_bytes
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.in_flight = 0
        self.reclaimer = MemoryReclaimer(every_bytes=max_body_bytes)

    def declared_too_large(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"content-length":
                return value.isdigit() and int(value) > self.max_body_bytes
        return False

    def reserve(self, scope: Scope) -> int | None:
        """The bytes reserved for the request's body (0: nothing to bound); None: no room."""
        if scope["method"] not in _METHODS_WITH_BODIES:
            return 0
        size = self._declared_size(scope)
        if size and self.in_flight + size > self.budget_bytes:
            return None
        self.in_flight += size
        return size

    def release(self, size: int) -> None:
        """The request is answered: its reservation, and in time its memory, are given back."""
        if size:
            self.in_flight -= size
            self.reclaimer.answered(size)

    def _declared_size(self, scope: Scope) -> int:
        """The bytes to reserve: `Content-Length`, or the most a chunked body may hold."""
        length: bytes | None = None
        chunked = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                length = value
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
        if length is not None and length.isdigit():
            return int(length)
        return self.max_body_bytes if chunked else 0

    def busy(self) -> JSONResponse:
        response = problems.problem_response(
            status=429,
            code="server_busy",
            title="Server busy",
            detail="This API process is reading as many request bodies as it may at once "
            "(MAX_INFLIGHT_BODY_BYTES); retry after the time in Retry-After.",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def reading(self, receive: Receive, *, deadline: bool) -> Receive:
        """`receive`, refusing a body past `MAX_BODY_BYTES` (whatever it declared) and, with
        a `deadline`, one still arriving `REQUEST_READ_TIMEOUT_S` after the headers."""
        due = asyncio.get_running_loop().time() + self.read_timeout_s if deadline else None
        received = 0

        async def receive_in_bounds() -> Message:
            nonlocal received, due
            if due is None:  # no deadline, or the body is in: what follows is a disconnect
                message = await receive()
            else:
                try:
                    async with asyncio.timeout_at(due):
                        message = await receive()
                except TimeoutError:
                    raise self._too_slow() from None
                if not (message["type"] == "http.request" and message.get("more_body", False)):
                    due = None
            received += len(message.get("body", b""))
            if received > self.max_body_bytes:
                raise self.too_large()
            return message

        return receive_in_bounds

    def too_large(self) -> HTTPException:
        # An HTTPException, because FastAPI re-raises those from body reading
        # (anything else becomes a generic 400) and renders them as `payload_too_large`.
        return HTTPException(
            413,
            f"The request body is over the limit of {self.max_body_bytes} bytes "
            "(MAX_BODY_BYTES); send fewer or smaller audits per request.",
        )

    def _too_slow(self) -> HTTPException:
        # An HTTPException: FastAPI re-raises those from body reading, and the handler
        # renders it as a problem. `Connection: close` makes the server drop the client.
        return HTTPException(
            408,
            f"The request body did not arrive within {self.read_timeout_s:g} s "
            "(REQUEST_READ_TIMEOUT_S).",
            headers={"Connection": "close"},
        )
