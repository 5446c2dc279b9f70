"""What a hostile probe tried with cursors, trailing slashes and Host headers.

A cursor carried an unkeyed checksum: anyone could forge one (a timestamp in 2099), and
a cursor worked across filters and across `/audits` and `/batches`. `GET /audits/` with
`Host: evil.example` was redirected to `http://evil.example/api/v1/audits`.
"""

import base64
import hashlib
from typing import Any

import pytest
from httpx import AsyncClient
from pydantic import SecretStr

from tests.api.checks import assert_problem
from tests.api.conftest import ClientFactory
from tests.api.support import log_events, submit
from tests.factories import batch_request

SECRET = SecretStr("a secret key of this deployment")


def unkeyed(payload: str) -> str:
    """A cursor as anyone could forge it before cursors were signed: a sha256 checksum."""
    token = f"{payload}|{hashlib.sha256(payload.encode()).hexdigest()[:12]}"
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


async def next_cursor(client: AsyncClient, path: str, **params: Any) -> str:
    cursor: str | None = (await client.get(path, params={"limit": 1, **params})).json()[
        "next_cursor"
    ]
    assert cursor is not None
    return cursor


async def test_a_forged_cursor_is_422(client: AsyncClient) -> None:
    await submit(client)
    forged = unkeyed("2099-01-01T00:00:00+00:00|00000000-0000-0000-0000-000000000000")

    response = await client.get("/audits", params={"cursor": forged})

    assert_problem(response, 422, "invalid_cursor")


async def test_a_cursor_is_good_for_its_own_route_and_filters_only(client: AsyncClient) -> None:
    for _ in range(2):
        await client.post("/batches", json=batch_request(size=2))
    failed_or_queued = await next_cursor(client, "/audits", status=["failed", "queued"])
    of_batches = await next_cursor(client, "/batches")

    same_filters_other_order = {"status": ["queued", "failed"], "cursor": failed_or_queued}
    assert (await client.get("/audits", params=same_filters_other_order)).status_code == 200
    for path, params in [
        ("/audits", {"cursor": failed_or_queued}),
        ("/audits", {"status": "queued", "cursor": failed_or_queued}),
        ("/audits", {"cursor": of_batches}),
        ("/batches", {"cursor": failed_or_queued}),
        ("/rubrics", {"cursor": of_batches}),
    ]:
        assert_problem(await client.get(path, params=params), 422, "invalid_cursor")


async def test_cursors_outlive_the_process_that_issued_them_under_one_secret_key(
    client_with: ClientFactory,
) -> None:
    async with client_with(secret_key=SECRET) as first:
        await submit(first)
        await submit(first)
        cursor = await next_cursor(first, "/audits")
    async with client_with(secret_key=SECRET) as second:
        assert (await second.get("/audits", params={"cursor": cursor})).status_code == 200
    async with client_with(secret_key=SecretStr("another secret key, another deployment")) as other:
        assert_problem(await other.get("/audits", params={"cursor": cursor}), 422, "invalid_cursor")


async def test_without_a_secret_key_each_process_signs_with_its_own_and_says_so(
    client_with: ClientFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    async with client_with() as first:
        await submit(first)
        await submit(first)
        cursor = await next_cursor(first, "/audits")
    async with client_with() as second:
        response = await second.get("/audits", params={"cursor": cursor})

    assert_problem(response, 422, "invalid_cursor")
    warnings = [e for e in log_events(capsys) if e["event"] == "secret_key_missing"]
    assert len(warnings) == 2
    assert "SECRET_KEY" in warnings[0]["detail"]


async def test_a_trailing_slash_is_a_404_problem_not_a_redirect(client: AsyncClient) -> None:
    response = await client.get("/audits/", headers={"Host": "evil.example"})

    assert_problem(response, 404, "not_found")
    assert "location" not in response.headers


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("api.example.com", 200),
        ("API.example.com:8443", 200),
        ("eu.tenants.example.com", 200),
        ("evil.example", 400),
        ("example.com", 400),
        ("api.example.com.evil.example", 400),
        ("", 400),
    ],
)
async def test_allowed_hosts_answer_and_others_are_refused(
    client_with: ClientFactory, host: str, status: int
) -> None:
    allowed = ["api.example.com", "*.tenants.example.com"]
    async with client_with(allowed_hosts=allowed) as client:
        response = await client.get("/audits", headers={"Host": host})
        probe = await client.get("/health/live", headers={"Host": "10.0.0.7:8000"})

    assert response.status_code == status, response.text
    if status == 400:
        assert_problem(response, 400, "invalid_host")
    assert probe.status_code == 200  # load balancers probe by address
