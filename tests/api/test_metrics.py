"""`GET /metrics`: Prometheus text, per-process request metrics and the fleet's figures."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal

import sqlalchemy as sa
from arq.connections import ArqRedis
from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.ext.asyncio import AsyncEngine

from api.metrics import SOURCE_TIMEOUT_S
from shared import workers
from shared.config import Settings
from shared.db import SessionFactory
from shared.tenants.caller import DEFAULT_TENANT
from tests.api.conftest import ClientFactory
from tests.factories import audit_request
from tests.rows import set_monthly_budget, spend_this_month


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


async def scrape(client: AsyncClient) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = await client.get("http://test/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_queue_depth_is_what_postgresql_holds(client_with: ClientFactory) -> None:
    async with client_with() as client:
        created = [(await client.post("/audits", json=audit_request())).json() for _ in range(3)]
        await client.post(f"/audits/{created[0]['id']}/cancel")

        scraped = await scrape(client)

    assert scraped["auditq_queue_depth", (("priority", "interactive"), ("tenant", "default"))] == 2
    assert 0 <= scraped["auditq_queue_oldest_age_seconds", (("priority", "interactive"),)] < 60
    assert scraped["auditq_queue_oldest_age_seconds", (("priority", "bulk"),)] == 0
    assert scraped["auditq_audits_running", ()] == 0
    assert scraped["auditq_batches_running", ()] == 0


async def test_a_tenant_past_its_budget_is_held_and_ages_no_queue(
    client_with: ClientFactory, engine: AsyncEngine, session_factory: SessionFactory
) -> None:
    async with client_with() as client:
        await client.post("/audits", json=audit_request())
        async with engine.begin() as connection:  # queued for an hour, as a held audit gets
            await connection.execute(
                sa.text("UPDATE audit SET created_at = now() - interval '1 hour'")
            )
        await set_monthly_budget(session_factory, DEFAULT_TENANT, Decimal(10))
        await spend_this_month(session_factory, DEFAULT_TENANT, Decimal(10))

        scraped = await scrape(client)

    queue = (("priority", "interactive"), ("tenant", DEFAULT_TENANT))
    assert scraped["auditq_queue_depth", queue] == scraped["auditq_queue_held", queue] == 1
    assert scraped["auditq_queue_oldest_age_seconds", (("priority", "interactive"),)] == 0


async def test_requests_are_counted_by_route_template(client_with: ClientFactory) -> None:
    async with client_with() as client:
        audit = (await client.post("/audits", json=audit_request())).json()
        await client.get(f"/audits/{audit['id']}")
        await client.get("/audits/00000000-0000-4000-8000-000000000000")
        await client.get("/no/such/path")

        scraped = await scrape(client)

    by_id = "/api/v1/audits/{audit_id}"
    assert (
        scraped[
            "auditq_http_requests_total", (("method", "GET"), ("route", by_id), ("status", "200"))
        ]
        == 1
    )
    assert (
        scraped[
            "auditq_http_requests_total", (("method", "GET"), ("route", by_id), ("status", "404"))
        ]
        == 1
    )
    assert (
        scraped[
            "auditq_http_requests_total",
            (("method", "GET"), ("route", "unmatched"), ("status", "404")),
        ]
        == 1
    )
    assert not [key for key in scraped if audit["id"] in str(key)]  # never a raw id
    assert (
        scraped[
            "auditq_http_request_duration_seconds_count",
            (("method", "POST"), ("route", "/api/v1/audits")),
        ]
        == 1
    )


async def test_metrics_answer_with_postgresql_away(client_with: ClientFactory) -> None:
    async with client_with(database_url="postgresql+asyncpg://postgres@127.0.0.1:1/none") as client:
        scraped = await scrape(client)

    assert scraped["auditq_scrape_errors_total", (("source", "postgresql"),)] == 1
    assert not [key for key in scraped if key[0] == "auditq_queue_depth"]


async def test_metrics_are_open_with_keys_and_any_host(client_with: ClientFactory) -> None:
    async with client_with(auth="keys", allowed_hosts=["auditq.example.com"]) as client:
        response = await client.get("http://10.0.0.7:8000/metrics")

    assert response.status_code == 200


async def test_workers_alive_come_from_their_heartbeats(
    client_with: ClientFactory, redis: ArqRedis, settings: Settings
) -> None:
    await workers.beat(redis, settings.queue_name, "host:1:a")
    async with client_with() as client:
        scraped = await scrape(client)
        ready = (await client.get("/health/ready")).json()

    assert scraped["auditq_workers_alive", ()] == 1
    assert ready["workers_alive"] == 1


@asynccontextmanager
async def silent_server() -> AsyncIterator[int]:
    """A port that accepts connections and never answers: a source behind a partition."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_metrics_answer_in_time_with_redis_silent(client_with: ClientFactory) -> None:
    async with (
        silent_server() as port,
        client_with(redis_url=f"redis://127.0.0.1:{port}/0") as client,
    ):
        began = time.monotonic()
        scraped = await scrape(client)
        took = time.monotonic() - began

    assert took < SOURCE_TIMEOUT_S + 3.0  # within a scrape timeout, not hung on Redis
    assert scraped["auditq_scrape_errors_total", (("source", "redis"),)] == 1
    assert not [key for key in scraped if key[0] == "auditq_workers_alive"]
    assert scraped["auditq_audits_running", ()] == 0  # PostgreSQL's figures are still there


async def test_an_unusual_method_is_labelled_other(client_with: ClientFactory) -> None:
    async with client_with() as client:
        await client.request("PROPFIND", "/audits")
        scraped = await scrape(client)

    methods = {dict(key[1]).get("method") for key in scraped if key[0].startswith("auditq_http")}
    assert "other" in methods
    assert "PROPFIND" not in methods
