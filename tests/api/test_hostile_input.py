"""Hostile requests that generated ones do not make, or whose answers they do not check.

A GET that declares a huge body used to reach the batch results stream, whose disconnect
watch then read the refused body after the response had started: an exception in the
middle of a 200 rather than a 413. A wrong method was told only some of the right ones.
"""

from uuid import uuid4

import pytest
from httpx import AsyncClient

from shared.config import Settings
from tests.api.checks import assert_problem
from tests.factories import batch_request


async def test_a_body_declared_over_the_limit_is_413_where_no_body_is_read(
    client: AsyncClient, settings: Settings
) -> None:
    batch = (await client.post("/batches", json=batch_request(size=2))).json()
    too_long = {"Content-Length": str(settings.max_body_bytes + 1)}

    for path in (f"/batches/{batch['id']}/results", f"/batches/{batch['id']}", "/audits"):
        response = await client.get(path, headers=too_long)

        assert_problem(response, 413, "payload_too_large")
        assert "x-request-id" in response.headers


@pytest.mark.parametrize(
    ("method", "path", "allowed"),
    [
        ("DELETE", "/audits", "GET, POST"),
        ("OPTIONS", "/audits", "GET, POST"),
        ("PUT", f"/audits/{uuid4()}", "GET"),
        ("GET", f"/audits/{uuid4()}/cancel", "POST"),
        ("DELETE", "/rubrics", "GET, POST"),
    ],
)
async def test_a_wrong_method_is_told_every_method_the_path_allows(
    client: AsyncClient, method: str, path: str, allowed: str
) -> None:
    response = await client.request(method, path)

    assert_problem(response, 405, "method_not_allowed")
    # Starlette alone names the methods of the first route on the path: `POST` for /audits.
    assert response.headers["allow"] == allowed
