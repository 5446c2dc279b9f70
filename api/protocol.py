"""uvicorn's HTTP protocol with a deadline for a request's headers (`--http api.protocol:…`).

uvicorn times out an idle keep-alive connection, but any byte received cancels that
timer, and nothing bounds a connection that has not finished sending its headers: 20
connections trickling header bytes were held for as long as they kept trickling. Here a
connection has `REQUEST_READ_TIMEOUT_S` to complete a request's headers, counted from
when it opened or from the previous response; then it gets 408 and is closed. (The body
has its own deadline, in api/bodies.py, where the app reads it.) Nor did anything bound
the size of the headers: past 64 KiB (URL included) the request is refused, 400.
"""

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from shared.config import get_settings

MAX_HEADER_BYTES = 64 * 1024
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"


class HttpWithDeadlines(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers_timeout_s = get_settings().request_read_timeout_s
        self.headers_deadline: asyncio.TimerHandle | None = None
        self.receiving_headers = False
        self.header_bytes: int | None = 0  # None: in a body, not counted

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def data_received(self, data: bytes) -> None:
        # Counted before the headers are complete; the parser buffers a header until its
        # end, so the bound applies to what is received, not to what it has parsed.
        counted = self.header_bytes is not None
        if counted:
            self.header_bytes = (self.header_bytes or 0) + len(data)
        super().data_received(data)
        if counted and self.header_bytes is not None and self.header_bytes > MAX_HEADER_BYTES:
            self.send_400_response(f"Request headers over {MAX_HEADER_BYTES} bytes.")

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self.header_bytes = 0  # what follows is the next request's headers

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.receiving_headers = True

    def on_headers_complete(self) -> None:
        self.receiving_headers = False
        self.header_bytes = None
        self._disarm()
        super().on_headers_complete()

    def on_response_complete(self) -> None:
        waits_for_a_request = not self.pipeline  # else the next request's headers are in
        super().on_response_complete()
        if waits_for_a_request and not self.transport.is_closing():
            self._arm()

    def _arm(self) -> None:
        self._disarm()
        self.headers_deadline = self.loop.call_later(self.headers_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self.headers_deadline is not None:
            self.headers_deadline.cancel()
            self.headers_deadline = None

    def _expired(self) -> None:
        self.headers_deadline = None
        if self.transport.is_closing():
            return
        if self.receiving_headers:  # an idle connection is just closed, as keep-alive does
            self.transport.write(REQUEST_TIMEOUT)
        self.transport.close()
