"""`Idempotency-Key` on POST /audits and POST /batches: a retried request is safe."""

import asyncio
import copy
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.types import ASGIApp, Receive, Scope, Send

from shared.config import Settings
from tests.api.checks import assert_nothing_written, assert_problem, queued_jobs, row_counts
from tests.factories import audit_request, batch_request, criterion

REPLAYED = "idempotent-replayed"

# Each resource type: its path, a valid body, and how many audits that body creates.
METADATA = {"sku": "TB-01", "shop": "eu", "tags": {"a": 1, "b": 2}}
RESOURCES = {
    "audits": ("/audits", audit_request(metadata=METADATA), 1),
    "batches": ("/batches", batch_request(3, metadata=METADATA), 3),
}


@pytest.fixture(params=list(RESOURCES))
def resource(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any], int]:
    path, body, audits = RESOURCES[request.param]
    return path, copy.deepcopy(body), audits


async def post(client: AsyncClient, path: str, body: Any, key: str | bytes) -> Response:
    value = key.encode() if isinstance(key, str) else key
    return await client.post(path, json=body, headers={b"Idempotency-Key": value})


def reversed_keys(value: Any) -> Any:
    """`value` with the keys of every object in it in reverse order."""
    if isinstance(value, dict):
        return {key: reversed_keys(item) for key, item in reversed(value.items())}
    if isinstance(value, list):
        return [reversed_keys(item) for item in value]
    return value


def with_defaults(body: dict[str, Any]) -> dict[str, Any]:
    """`body` with the defaults it left out written in."""
    if "audits" in body:
        return body | {"audits": [with_defaults(item) for item in body["audits"]]}
    criteria = [{"weight": 1.0} | c for c in body["criteria"]]
    return {"pass_threshold": 70} | body | {"criteria": criteria}


def spelled_out(body: dict[str, Any]) -> dict[str, Any]:
    """The same request as `body`, written differently."""
    rewritten: dict[str, Any] = reversed_keys(with_defaults(body))
    return rewritten


async def test_the_same_key_and_body_return_the_first_resource(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    resource: tuple[str, dict[str, Any], int],
) -> None:
    path, body, audits = resource
    first = await post(client, path, body, "order-42")
    jobs = await queued_jobs(redis, settings)

    again = await post(client, path, body, "order-42")

    assert (first.status_code, again.status_code) == (202, 202)
    assert REPLAYED not in first.headers
    assert again.headers[REPLAYED] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["location"] == first.headers["location"]
    assert await row_counts(engine) == {
        "audit": audits,
        "batch": int(path == "/batches"),
        "rubric": 0,
    }
    assert len(jobs) == audits
    assert await queued_jobs(redis, settings) == jobs


async def test_a_replay_shows_the_resource_as_it_is_now(
    client: AsyncClient, resource: tuple[str, dict[str, Any], int]
) -> None:
    path, body, _ = resource
    first = (await post(client, path, body, "order-42")).json()
    await client.post(f"{path}/{first['id']}/cancel")

    again = await post(client, path, body, "order-42")

    assert again.status_code == 202
    assert again.json()["status"] == "cancelled"


async def test_key_order_and_spelled_out_defaults_are_the_same_body(
    client: AsyncClient, engine: AsyncEngine, resource: tuple[str, dict[str, Any], int]
) -> None:
    path, body, audits = resource
    first = await post(client, path, body, "order-42")

    again = await post(client, path, spelled_out(body), "order-42")

    assert again.status_code == 202, again.text
    assert again.headers[REPLAYED] == "true"
    assert again.json()["id"] == first.json()["id"]
    assert (await row_counts(engine))["audit"] == audits


@pytest.mark.parametrize(
    "change",
    [
        {"metadata": {"sku": "TB-02"}},
        {"pass_threshold": 80},
        {"criteria": [criterion()]},
    ],
)
async def test_the_same_key_with_another_body_is_refused(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    resource: tuple[str, dict[str, Any], int],
    change: dict[str, Any],
) -> None:
    path, body, _ = resource
    first = await post(client, path, body, "order-42")
    before = (await row_counts(engine), await queued_jobs(redis, settings))
    changed = copy.deepcopy(body)
    (changed["audits"][-1] if "audits" in changed else changed).update(change)

    response = await post(client, path, changed, "order-42")

    problem = assert_problem(response, 422, "idempotency_key_mismatch")
    assert "order-42" in problem["detail"]
    assert REPLAYED not in response.headers
    assert (await row_counts(engine), await queued_jobs(redis, settings)) == before
    assert (await post(client, path, body, "order-42")).json()["id"] == first.json()["id"]


async def test_a_new_key_creates_a_new_resource(
    client: AsyncClient, engine: AsyncEngine, resource: tuple[str, dict[str, Any], int]
) -> None:
    path, body, audits = resource
    first = await post(client, path, body, "order-42")

    second = await post(client, path, body, "order-43")
    without_key = await client.post(path, json=body)

    assert REPLAYED not in second.headers
    assert REPLAYED not in without_key.headers
    assert len({first.json()["id"], second.json()["id"], without_key.json()["id"]}) == 3
    assert (await row_counts(engine))["audit"] == 3 * audits


async def test_requests_without_a_key_are_never_replayed(
    client: AsyncClient, engine: AsyncEngine, resource: tuple[str, dict[str, Any], int]
) -> None:
    path, body, audits = resource

    responses = [await client.post(path, json=body) for _ in range(2)]

    assert all(REPLAYED not in response.headers for response in responses)
    assert responses[0].json()["id"] != responses[1].json()["id"]
    assert (await row_counts(engine))["audit"] == 2 * audits


@pytest.mark.parametrize("key", [b"k" * 255, "Ünïcødé key, spaces".encode(), b"0"])
async def test_any_key_up_to_255_characters_is_accepted(
    client: AsyncClient, resource: tuple[str, dict[str, Any], int], key: bytes
) -> None:
    path, body, _ = resource

    first = await post(client, path, body, key)
    again = await post(client, path, body, key)

    assert (first.status_code, again.status_code) == (202, 202), first.text
    assert again.json()["id"] == first.json()["id"]


@pytest.mark.parametrize("key", ["k" * 256, ""])
async def test_a_key_too_long_or_empty_is_refused(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    resource: tuple[str, dict[str, Any], int],
    key: str,
) -> None:
    path, body, _ = resource

    response = await post(client, path, body, key)

    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [["header", "Idempotency-Key"]]
    await assert_nothing_written(engine, redis, settings)


async def test_keys_are_per_resource_type(client: AsyncClient, engine: AsyncEngine) -> None:
    audit = await post(client, "/audits", audit_request(), "shared-key")
    batch = await post(client, "/batches", batch_request(2), "shared-key")

    assert (audit.status_code, batch.status_code) == (202, 202), batch.text
    assert REPLAYED not in audit.headers
    assert REPLAYED not in batch.headers
    assert await row_counts(engine) == {"audit": 3, "batch": 1, "rubric": 0}
    assert (await post(client, "/audits", audit_request(), "shared-key")).headers[REPLAYED]
    assert (await post(client, "/batches", batch_request(2), "shared-key")).headers[REPLAYED]


async def test_a_refused_request_does_not_claim_its_key(
    client: AsyncClient, resource: tuple[str, dict[str, Any], int]
) -> None:
    path, body, _ = resource
    invalid = copy.deepcopy(body)
    (invalid["audits"][0] if "audits" in invalid else invalid)["rubric"] = "no_such_rubric"

    refused = await post(client, path, invalid, "order-42")
    accepted = await post(client, path, body, "order-42")

    assert refused.status_code == 422
    assert accepted.status_code == 202, accepted.text
    assert REPLAYED not in accepted.headers


# Concurrency: one key, many requests at once


class InFlight:
    """An ASGI wrapper that records how many requests were in the app at the same time."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.now = 0
        self.most = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await self.app(scope, receive, send)
        finally:
            self.now -= 1


@pytest.fixture
async def concurrent(app: FastAPI) -> AsyncIterator[tuple[AsyncClient, InFlight]]:
    """A client whose requests run side by side in the app, each with its own DB session."""
    counted = InFlight(app)
    transport = ASGITransport(app=counted)
    async with AsyncClient(transport=transport, base_url="http://test/api/v1") as client:
        yield client, counted


async def test_concurrent_requests_with_one_key_create_one_resource(
    concurrent: tuple[AsyncClient, InFlight],
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    resource: tuple[str, dict[str, Any], int],
) -> None:
    client, in_flight = concurrent
    path, body, audits = resource

    responses = await asyncio.gather(*(post(client, path, body, "order-42") for _ in range(20)))

    assert in_flight.most == 20  # they really overlapped
    assert [response.status_code for response in responses] == [202] * 20, responses[0].text
    assert len({response.json()["id"] for response in responses}) == 1
    assert sum(REPLAYED not in response.headers for response in responses) == 1
    assert await row_counts(engine) == {
        "audit": audits,
        "batch": int(path == "/batches"),
        "rubric": 0,
    }
    assert len(await queued_jobs(redis, settings)) == audits
