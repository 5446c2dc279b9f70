"""Slow and greedy clients against a real server: every connection gets a deadline.

The probe held 150 connections that sent their body a byte at a time and 20 that sent
their headers so, for 45 s, and none was ever closed. Here the server is uvicorn with
auditq's protocol (as the Procfile runs it), with `REQUEST_READ_TIMEOUT_S` short, and
the clients trickle for as long as the server lets them; the test bounds only a hang.
"""

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import uvicorn

from api.protocol import HttpWithDeadlines
from cli.dev import free_port
from shared.config import Settings
from tests.environment import environment
from tests.factories import audit_request

READ_TIMEOUT_S = "0.5"
WITHIN_S = 60.0  # a bound for a hang, not a measure of speed


@asynccontextmanager
async def served(settings: Settings) -> AsyncIterator[int]:
    """The API on a loopback port, as the Procfile's `web` runs it; yields the port."""
    from api.app import create_app

    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, http=HttpWithDeadlines, log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    for _ in range(int(WITHIN_S / 0.02)):
        if server.started:
            break
        await asyncio.sleep(0.02)
    try:
        yield port
    finally:
        server.should_exit = True
        await task


@pytest.fixture
async def port(settings: Settings) -> AsyncIterator[int]:
    with environment(REQUEST_READ_TIMEOUT_S=READ_TIMEOUT_S):
        timed = settings.model_copy(update={"request_read_timeout_s": float(READ_TIMEOUT_S)})
        async with served(timed) as port:
            yield port


async def trickle(port: int, head: bytes, then: bytes = b"x") -> bytes:
    """Send `head`, then `then` a byte every 0.1 s until the server closes; what it said."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(head)
    answer = b""

    async def read_all() -> None:
        nonlocal answer
        while chunk := await reader.read(65536):
            answer += chunk

    reading = asyncio.create_task(read_all())
    try:
        async with asyncio.timeout(WITHIN_S):
            while not reading.done():
                writer.write(then)
                await asyncio.sleep(0.1)
    finally:
        writer.close()
    return answer


def audit_body() -> bytes:
    return json.dumps(audit_request()).encode()


def slow_body_head(length: int) -> bytes:
    return (
        b"POST /api/v1/audits HTTP/1.1\r\nHost: test\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(length).encode() + b"\r\n\r\n"
    )


SLOW_HEADERS = b"GET /api/v1/health/live HTTP/1.1\r\nHost: test\r\nX-Slow: "


async def test_slow_bodies_and_slow_headers_are_cut_off(port: int) -> None:
    body = audit_body()
    slow_bodies = [trickle(port, slow_body_head(len(body)) + body[:10]) for _ in range(150)]
    slow_headers = [trickle(port, SLOW_HEADERS) for _ in range(20)]

    answers = await asyncio.gather(*slow_bodies, *slow_headers)

    for answer in answers[:150]:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]
        assert b'"code":"request_timeout"' in answer
        assert b"connection: close" in answer.lower()
    for answer in answers[150:]:
        assert answer.startswith(b"HTTP/1.1 408 "), answer[:200]


async def test_an_idle_connection_is_closed_without_an_answer(port: int) -> None:
    assert await trickle(port, b"", then=b"") == b""


async def test_a_body_left_unread_after_an_early_answer_cannot_hold_the_connection(
    port: int,
) -> None:
    head = slow_body_head(10_000).replace(b"/api/v1/audits", b"/api/v1/nowhere")

    answer = await trickle(port, head)

    assert answer.startswith(b"HTTP/1.1 404 "), answer[:200]


async def test_headers_over_64_kib_are_refused(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /api/v1/health/live HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 70_000)
    async with asyncio.timeout(WITHIN_S):
        answer = await reader.read()
    writer.close()

    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


async def test_a_quick_client_is_not_disturbed(port: int) -> None:
    body = audit_body()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    for _ in range(2):  # twice on one connection: keep-alive still works
        writer.write(slow_body_head(len(body)) + body)
        async with asyncio.timeout(WITHIN_S):
            status = await reader.readline()
            while (line := await reader.readline()) != b"\r\n":
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
        assert status.startswith(b"HTTP/1.1 202 "), status
    writer.close()
