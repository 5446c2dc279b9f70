"""`GET /api/v1/status`: the fleet as PostgreSQL and the heartbeats have it, for admins."""

from datetime import datetime, timedelta
from itertools import pairwise
from typing import Any

import pytest
from arq.connections import ArqRedis
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from api.routes.status import StatusCache
from shared.config import Settings
from shared.db import SessionFactory
from shared.fleet.schemas import FleetStatus
from shared.tenants.caller import Role
from tests.api.checks import assert_problem
from tests.api.conftest import ClientFactory
from tests.api.test_tenants import new_key
from tests.fixtures.fleet import HISTORY_AUDITS, seed_fleet, truth


def _finished(counts: dict[str, int]) -> dict[str, int]:
    statuses = ("succeeded", "failed", "cancelled")
    return {**{s: counts.get(s, 0) for s in statuses}, "total": sum(counts.values())}


async def test_the_status_is_what_postgresql_and_redis_hold(
    client: AsyncClient,
    session_factory: SessionFactory,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
) -> None:
    seeded = await seed_fleet(session_factory, redis, settings.queue_name)

    response = await client.get("/status")

    assert response.status_code == 200, response.text
    status = response.json()
    expected = await truth(engine)
    queue = status["queue"]
    assert {(q["tenant"], q["priority"]): q["queued"] for q in queue["by_priority_and_tenant"]} == (
        expected.queued
    )
    assert queue["queued"] == sum(expected.queued.values()) == 6
    for priority, age in expected.oldest_age_s.items():
        assert abs(queue["oldest_age_seconds"][priority] - age) < 5
    assert status["audits_running"] == expected.running == 2
    assert status["workers_alive"] == seeded.workers
    throughput = status["throughput"]
    assert throughput["last_5_minutes"] == _finished(expected.finished_5_minutes)
    assert throughput["last_5_minutes"]["failed"] == 3  # two rate limits and a bad reply
    assert throughput["last_hour"] == _finished(expected.finished_hour)
    assert throughput["last_hour"]["total"] > HISTORY_AUDITS
    assert {f["code"]: f["last_hour"] for f in status["failures"]} == expected.failed_hour_by_code
    assert status["batches_running"] == 1


async def test_minutes_are_the_last_hour_of_the_clock_oldest_first(
    client: AsyncClient, session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    await seed_fleet(session_factory, redis, settings.queue_name)

    status = (await client.get("/status")).json()

    minutes = status["throughput"]["per_minute"]
    starts = [datetime.fromisoformat(m["minute"]) for m in minutes]
    assert len(minutes) == 60
    assert all(later - earlier == timedelta(minutes=1) for earlier, later in pairwise(starts))
    now = datetime.fromisoformat(status["generated_at"])
    assert starts[-1] <= now < starts[-1] + timedelta(minutes=1)
    assert {start.second for start in starts} == {0}
    for name in ("succeeded", "failed", "cancelled", "total"):
        assert sum(m[name] for m in minutes) == status["throughput"]["last_hour"][name]


async def test_failures_come_by_code_most_first_with_their_latest_audits(
    client: AsyncClient, session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    seeded = await seed_fleet(session_factory, redis, settings.queue_name)

    failures = {f["code"]: f for f in (await client.get("/status")).json()["failures"]}

    limited = failures["rate_limited"]
    assert (limited["last_hour"], limited["last_5_minutes"]) == (3, 2)  # not the one 2 h ago
    assert [a["id"] for a in limited["latest"]] == [str(i) for i in seeded.failed["rate_limited"]]
    # The batch's failed audit is a bad reply too, ten minutes old.
    assert failures["invalid_model_output"]["last_hour"] == 2
    counts = [f["last_hour"] for f in failures.values()]
    assert counts == sorted(counts, reverse=True)


async def test_batches_in_progress_come_with_their_counts(
    client: AsyncClient, session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    seeded = await seed_fleet(session_factory, redis, settings.queue_name)

    [batch] = (await client.get("/status")).json()["batches"]

    assert batch["id"] == str(seeded.batch_id)
    assert batch["name"] == "Spring catalogue"
    assert batch["status"] == "running"
    counts = {"queued": 2, "running": 1, "succeeded": 1, "failed": 1, "cancelled": 0, "total": 5}
    assert batch["counts"] == counts


async def test_an_empty_fleet_is_all_zeros(client: AsyncClient) -> None:
    status = (await client.get("/status")).json()

    assert status["queue"] == {
        "queued": 0,
        "by_priority_and_tenant": [],
        "oldest_age_seconds": {"interactive": 0.0, "bulk": 0.0},
    }
    assert status["workers_alive"] == 0
    assert status["failures"] == status["batches"] == []
    assert status["throughput"]["last_hour"]["total"] == 0


async def test_without_redis_workers_alive_is_null(client_with: ClientFactory) -> None:
    async with client_with(redis_url="redis://127.0.0.1:1/0") as client:
        response = await client.get("/status")

    assert response.status_code == 200
    assert response.json()["workers_alive"] is None


async def test_without_postgresql_it_is_a_503(client_with: ClientFactory) -> None:
    async with client_with(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none") as client:
        response = await client.get("/status")

    assert_problem(response, 503, "database_unavailable")


# --- Admins only ------------------------------------------------------------------------


@pytest.fixture
async def keyed(client_with: ClientFactory, session_factory: SessionFactory) -> Any:
    admin = await new_key(session_factory, "ops", Role.ADMIN)
    member = await new_key(session_factory, "acme")
    async with client_with(auth="keys") as client:
        yield client, admin, member


async def test_only_an_admin_key_reads_the_status(keyed: Any) -> None:
    client, admin, member = keyed

    as_member = await client.get("/status", headers={"Authorization": f"Bearer {member}"})
    anonymous = await client.get("/status")
    as_admin = await client.get("/status", headers={"Authorization": f"Bearer {admin}"})

    assert_problem(as_member, 403, "forbidden")
    assert "admin" in as_member.json()["detail"]
    assert_problem(anonymous, 401, "unauthorized")
    assert as_admin.status_code == 200
    FleetStatus.model_validate(as_admin.json())


async def test_the_schema_documents_the_status_and_its_refusals(client_with: ClientFactory) -> None:
    async with client_with(auth="keys") as client:
        document = (await client.get("http://test/openapi.json")).json()

    operation = document["paths"]["/api/v1/status"]["get"]
    assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/FleetStatus"
    }
    assert {"401", "403", "503"} <= set(operation["responses"])
    assert "`forbidden`" in operation["responses"]["403"]["description"]
    assert operation["security"] == [{"bearer": []}]
    assert not [path for path in document["paths"] if path.startswith("/dashboard")]


# --- One read every few seconds, whoever asks -----------------------------------------


async def test_requests_within_the_ttl_share_one_read() -> None:
    cache = StatusCache(ttl_s=60)
    reads = 0

    async def read() -> FleetStatus:
        nonlocal reads
        reads += 1
        return FleetStatus.model_validate(_EMPTY)

    first = await cache.get(read)
    second = await cache.get(read)

    assert reads == 1
    assert first is second
    assert await StatusCache(ttl_s=0).get(read) is not first
    assert reads == 2


_EMPTY: dict[str, Any] = {
    "generated_at": "2026-12-01T00:00:00Z",
    "queue": {"queued": 0, "by_priority_and_tenant": [], "oldest_age_seconds": {}},
    "audits_running": 0,
    "workers_alive": 0,
    "throughput": {"last_5_minutes": {}, "last_hour": {}, "per_minute": []},
    "failures": [],
    "batches_running": 0,
    "batches": [],
}
