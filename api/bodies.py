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
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import problems
from api.memory import MemoryReclaimer

RETRY_AFTER_S = 1
# A body sent with another method is never read by a route: nothing to bound.
_METHODS_WITH_BODIES = frozenset({"POST", "PUT", "PATCH"})


class BodyBudget:
    def __init__(
        self, app: ASGIApp, *, budget_bytes: int, max_body_bytes: int, read_timeout_s: float
    ) -> None:
        self.app = app
        self.budget_bytes = budget_bytes
        self.max_body_bytes = max_body_bytes
        self.read_timeout_s = read_timeout_s
        self.in_flight = 0
        self.reclaimer = MemoryReclaimer(every_bytes=max_body_bytes)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _METHODS_WITH_BODIES:
            await self.app(scope, receive, send)
            return
        size = self._declared_size(scope)
        if size == 0:
            await self.app(scope, receive, send)
            return
        if self.in_flight + size > self.budget_bytes:
            await self._busy()(scope, receive, send)
            return
        self.in_flight += size
        try:
            await self.app(scope, self._with_deadline(receive), send)
        finally:
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

    def _busy(self) -> JSONResponse:
        response = problems.problem_response(
            status=429,
            code="server_busy",
            title="Server busy",
            detail="This API process is reading as many request bodies as it may at once "
            "(MAX_INFLIGHT_BODY_BYTES); retry after the time in Retry-After.",
        )
        response.headers["Retry-After"] = str(RETRY_AFTER_S)
        return response

    def _with_deadline(self, receive: Receive) -> Receive:
        deadline = asyncio.get_running_loop().time() + self.read_timeout_s
        reading = True

        async def receive_in_time() -> Message:
            nonlocal reading
            if not reading:  # the body is in: what follows is the wait for a disconnect
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                raise self._too_slow() from None
            reading = message["type"] == "http.request" and message.get("more_body", False)
            return message

        return receive_in_time

    def _too_slow(self) -> HTTPException:
        # An HTTPException: FastAPI re-raises those from body reading, and the handler
        # renders it as a problem. `Connection: close` makes the server drop the client.
        return HTTPException(
            408,
            f"The request body did not arrive within {self.read_timeout_s:g} s "
            "(REQUEST_READ_TIMEOUT_S).",
            headers={"Connection": "close"},
        )
