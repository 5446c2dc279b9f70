"""Big bodies in flight: a budget for the process, answered before a body is read.

The probe sent 100 concurrent 14.3 MiB `POST /batches` (all refused, 422): the API went
from 145 MB to 2,381 MB and stayed at 2,272 MB. Here the budget is two bodies' worth,
two bodies are held mid-upload, and a third is refused at once; the memory figures are
in the fault suite's hostile run (tests/faults/test_hostile.py).
"""

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

from httpx import AsyncClient, Response

from tests.api.checks import assert_problem
from tests.api.conftest import ClientFactory
from tests.factories import audit_request

MIB = 1024 * 1024
JSON = {"content-type": "application/json"}
WITHIN_S = 60.0  # a bound for a hang, not a measure of speed


def big_audit() -> bytes:
    return json.dumps(audit_request(content="a " * 45_000)).encode()  # 90 KB


class HeldUpload:
    """A body sent in two parts; the second waits until `finish()`."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.reading = asyncio.Event()  # the API has asked for the first part: admitted
        self.gate = asyncio.Event()

    async def parts(self) -> AsyncIterator[bytes]:
        self.reading.set()
        yield self.body[:1000]
        await self.gate.wait()
        yield self.body[1000:]

    def send(self, client: AsyncClient) -> "asyncio.Task[Response]":
        headers = {**JSON, "content-length": str(len(self.body))}
        return asyncio.create_task(client.post("/audits", content=self.parts(), headers=headers))


async def test_bodies_beyond_the_budget_are_refused_before_they_are_read(
    client_with: ClientFactory,
) -> None:
    body = big_audit()
    budget = 2 * len(body) + 10_000  # two of them and small ones fit, not three
    async with client_with(max_body_bytes=MIB, max_inflight_body_bytes=budget) as client:
        held = [HeldUpload(body), HeldUpload(body)]
        uploads = [upload.send(client) for upload in held]
        async with asyncio.timeout(WITHIN_S):
            for upload in held:
                await upload.reading.wait()
            third = await client.post("/audits", content=body, headers=JSON)
            small = await client.post("/audits", json=audit_request())
            for upload in held:
                upload.gate.set()
            admitted = await asyncio.gather(*uploads)
        after_them = await client.post("/audits", content=body, headers=JSON)

    problem = assert_problem(third, 429, "server_busy")
    assert third.headers["retry-after"] == "1"
    assert "MAX_INFLIGHT_BODY_BYTES" in problem["detail"]
    assert small.status_code == 202  # a small body still fits in what is left
    assert [response.status_code for response in admitted] == [202, 202]
    assert after_them.status_code == 202, after_them.text


async def test_a_body_stalled_past_the_deadline_is_408_and_gives_its_share_back(
    client_with: ClientFactory,
) -> None:
    body = big_audit()
    settings: dict[str, Any] = {
        "max_body_bytes": MIB,
        "max_inflight_body_bytes": len(body) + 100,  # one at a time
        "request_read_timeout_s": 0.2,
    }
    async with client_with(**settings) as client:
        stalled = HeldUpload(body)
        async with asyncio.timeout(WITHIN_S):
            answer = await stalled.send(client)
        after_it = await client.post("/audits", content=body, headers=JSON)

    assert_problem(answer, 408, "request_timeout")
    assert answer.headers["connection"] == "close"
    assert after_it.status_code == 202, after_it.text
