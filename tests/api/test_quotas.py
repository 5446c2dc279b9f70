"""A tenant's quotas: queued and running audits at most, and submissions a minute."""

import asyncio

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from api.app import create_app
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope
from shared.tenants import service
from tests.api.checks import assert_problem, row_counts, until_notified
from tests.api.conftest import ClientFactory
from tests.factories import audit_request, batch_request

pytestmark = pytest.mark.usefixtures("clean")


async def queued(client: AsyncClient) -> int:
    page = (await client.get("/audits?status=queued&status=running&limit=50")).json()
    return len(page["items"])


async def test_twenty_concurrent_submits_against_a_quota_of_five_leave_five(
    client_with: ClientFactory,
) -> None:
    async with client_with(tenant_max_queued=5) as client:
        responses = await asyncio.gather(
            *(client.post("/audits", json=audit_request()) for _ in range(20))
        )

        statuses = sorted(r.status_code for r in responses)
        assert statuses == [202] * 5 + [429] * 15
        refused = next(r for r in responses if r.status_code == 429)
        body = assert_problem(refused, 429, "quota_exceeded")
        assert "at most 5" in body["detail"]
        assert (body["limit"], body["max_queued"]) == ("max_queued", 5)
        assert int(refused.headers["Retry-After"]) > 0
        assert await queued(client) == 5


async def test_a_batch_that_does_not_fit_is_refused_whole(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    async with client_with(tenant_max_queued=5) as client:
        assert (await client.post("/batches", json=batch_request(3))).status_code == 202
        before = await row_counts(engine)

        refused = await client.post("/batches", json=batch_request(3))

        assert_problem(refused, 429, "quota_exceeded")
        assert await row_counts(engine) == before
        assert (await client.post("/batches", json=batch_request(2))).status_code == 202


async def test_a_batch_larger_than_the_quota_is_told_to_split(client_with: ClientFactory) -> None:
    async with client_with(tenant_max_queued=5) as client:
        refused = await client.post("/batches", json=batch_request(6))

    assert "split it into submissions of at most 5" in refused.json()["detail"]


async def test_finished_audits_make_room(client_with: ClientFactory) -> None:
    async with client_with(tenant_max_queued=1) as client:
        first = (await client.post("/audits", json=audit_request())).json()
        assert_problem(await client.post("/audits", json=audit_request()), 429, "quota_exceeded")

        await client.post(f"/audits/{first['id']}/cancel")

        assert (await client.post("/audits", json=audit_request())).status_code == 202


async def test_a_replayed_submission_is_not_refused_by_the_quota(
    client_with: ClientFactory,
) -> None:
    headers = {"Idempotency-Key": "nightly-1"}
    async with client_with(tenant_max_queued=1) as client:
        first = await client.post("/audits", json=audit_request(), headers=headers)
        again = await client.post("/audits", json=audit_request(), headers=headers)

    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Idempotent-Replayed"] == "true"


async def test_submissions_beyond_the_rate_are_refused_with_retry_after(
    client_with: ClientFactory,
) -> None:
    async with client_with(tenant_submit_rpm=3) as client:
        statuses = [
            (await client.post("/audits", json=audit_request())).status_code for _ in range(3)
        ]
        refused = await client.post("/batches", json=batch_request(1))  # a batch counts once

    assert statuses == [202, 202, 202]
    body = assert_problem(refused, 429, "rate_limited")
    assert body["submit_rpm"] == 3
    assert 0 < int(refused.headers["Retry-After"]) <= 60


async def test_a_tenants_own_quota_overrides_the_setting_at_once(
    settings: Settings, session_factory: SessionFactory
) -> None:
    app = create_app(settings.model_copy(update={"tenant_max_queued": 100}))
    async with (
        LifespanManager(app),
        AsyncClient(transport=ASGITransport(app=app), base_url="http://test/api/v1") as client,
    ):
        assert (await client.post("/audits", json=audit_request())).status_code == 202
        before = app.state.directory.generation

        async with session_scope(session_factory) as session:
            await service.set_tenant(SessionStatements(session), "default", {"max_queued": 1})
        await until_notified(app.state.directory, since=before)

        assert_problem(await client.post("/audits", json=audit_request()), 429, "quota_exceeded")


async def test_retrying_counts_against_the_quota(client_with: ClientFactory) -> None:
    async with client_with(tenant_max_queued=2) as client:
        first = [(await client.post("/audits", json=audit_request())).json() for _ in range(2)]
        for audit in first:
            await client.post(f"/audits/{audit['id']}/cancel")
        await client.post("/audits", json=audit_request())
        await client.post("/audits", json=audit_request())

        refused = await client.post(f"/audits/{first[0]['id']}/retry")

        assert_problem(refused, 429, "quota_exceeded")
        assert refused.headers["Retry-After"]
        assert (await client.get(f"/audits/{first[0]['id']}")).json()["status"] == "cancelled"
        assert await queued(client) == 2


async def test_a_batch_retry_past_the_quota_is_refused_whole(client_with: ClientFactory) -> None:
    async with client_with(tenant_max_queued=3) as client:
        batch = (await client.post("/batches", json=batch_request(3))).json()
        await client.post(f"/batches/{batch['id']}/cancel")
        await client.post("/audits", json=audit_request())

        refused = await client.post(f"/batches/{batch['id']}/retry?include=cancelled")

        assert_problem(refused, 429, "quota_exceeded")
        counts = (await client.get(f"/batches/{batch['id']}")).json()["counts"]
        assert counts["cancelled"] == 3


async def test_an_unreachable_redis_leaves_submits_unchecked_not_refused(
    client_with: ClientFactory,
) -> None:
    async with client_with(tenant_submit_rpm=1, redis_url="redis://127.0.0.1:1/0") as client:
        statuses = [
            (await client.post("/audits", json=audit_request())).status_code for _ in range(2)
        ]

    assert statuses == [202, 202]  # the reconciler enqueues them once Redis is back
