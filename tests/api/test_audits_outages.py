"""Redis or PostgreSQL down: the API degrades the way the README promises, never with a 500."""

import asyncio
from typing import Any
from uuid import uuid4

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from api.app import create_app
from shared.config import Settings
from shared.db import SessionFactory
from tests.api.checks import assert_problem
from tests.api.conftest import ClientFactory
from tests.api.support import log_events
from tests.factories import audit_request
from tests.fixtures.pgproxy import proxy_closing_late
from tests.rows import load_audit

# Nothing listens on port 1: connections are refused at once.
CLOSED_REDIS = "redis://127.0.0.1:1/0"
CLOSED_POSTGRES = "postgresql+asyncpg://postgres@127.0.0.1:1/auditq"


async def test_submit_with_redis_down_is_accepted_and_logged(
    client_with: ClientFactory,
    session_factory: SessionFactory,
    capsys: pytest.CaptureFixture[str],
) -> None:
    async with client_with(redis_url=CLOSED_REDIS) as client:
        response = await client.post("/audits", json=audit_request())

    # The row is the source of truth: the reconciler enqueues it once Redis is back.
    assert response.status_code == 202, response.text
    audit_id = response.json()["id"]
    assert (await load_audit(session_factory, audit_id)).status == "queued"
    failed = [event for event in log_events(capsys) if event["event"] == "enqueue_failed"]
    assert len(failed) == 1, failed
    assert failed[0]["level"] == "warning"
    assert failed[0]["audit_ids"] == [audit_id]
    assert failed[0]["request_id"] == response.headers["x-request-id"]


async def test_cancel_with_redis_down_still_cancels(
    client: AsyncClient, client_with: ClientFactory, session_factory: SessionFactory
) -> None:
    audit_id = (await client.post("/audits", json=audit_request())).json()["id"]

    async with client_with(redis_url=CLOSED_REDIS) as down:
        response = await down.post(f"/audits/{audit_id}/cancel")

    assert response.status_code == 200, response.text
    assert (await load_audit(session_factory, audit_id)).status == "cancelled"


ROUTES: list[tuple[str, str, dict[str, Any] | None]] = [
    ("POST", "/audits", audit_request()),
    ("GET", "/audits", None),
    ("GET", "/audits/{id}", None),
    ("POST", "/audits/{id}/cancel", None),
    ("POST", "/audits/{id}/retry", None),
]


@pytest.mark.parametrize(("method", "path", "body"), ROUTES)
async def test_postgres_down_is_503_database_unavailable(
    client_with: ClientFactory, method: str, path: str, body: dict[str, Any] | None
) -> None:
    async with client_with(database_url=CLOSED_POSTGRES) as client:
        response = await client.request(method, path.format(id=uuid4()), json=body)

    problem = assert_problem(response, 503, "database_unavailable")
    assert "PostgreSQL" in problem["detail"]
    assert response.headers["retry-after"].isdigit()
    assert "127.0.0.1" not in response.text  # no connection string, no driver message


async def test_a_pooled_connection_ended_by_a_restart_is_503_not_500(
    client_with: ClientFactory, settings: Settings
) -> None:
    # Under load a request can meet a pooled connection whose server has just said it is
    # shutting down, before the connection's close has arrived.
    async with (
        proxy_closing_late(settings.database_url, late_by_s=1.0) as proxy,
        client_with(database_url=proxy.url) as client,
    ):
        audit_id = (await client.post("/audits", json=audit_request())).json()["id"]
        await proxy.end_backends()
        await asyncio.sleep(0.5)

        refused = await client.get(f"/audits/{audit_id}")
        answered = await client.get(f"/audits/{audit_id}")

    assert_problem(refused, 503, "database_unavailable")
    assert answered.status_code == 200, answered.text  # a new connection, the server being up


async def test_postgres_down_still_validates_first(client_with: ClientFactory) -> None:
    async with client_with(database_url=CLOSED_POSTGRES) as client:
        response = await client.post("/audits", json=audit_request(subject=""))

    assert_problem(response, 422, "validation_error")


async def test_ready_when_everything_answers(client: AsyncClient) -> None:
    response = await client.get("/health/ready")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "redis": "ok"},
        "workers_alive": 0,  # none in this test: still ready, and it says so
    }


@pytest.mark.parametrize(
    ("overrides", "down"),
    [
        ({"database_url": CLOSED_POSTGRES}, {"database"}),
        ({"redis_url": CLOSED_REDIS}, {"redis"}),
        ({"database_url": CLOSED_POSTGRES, "redis_url": CLOSED_REDIS}, {"database", "redis"}),
    ],
    ids=["postgres down", "redis down", "both down"],
)
async def test_ready_is_503_naming_what_is_down(
    client_with: ClientFactory, overrides: dict[str, str], down: set[str]
) -> None:
    async with client_with(**overrides) as client:
        ready = await client.get("/health/ready")
        live = await client.get("/health/live")

    assert ready.status_code == 503
    body = ready.json()
    assert body["status"] == "unavailable"
    assert {name for name, state in body["checks"].items() if state != "ok"} == down
    assert all(body["checks"][name].startswith("down") for name in down)
    assert (live.status_code, live.json()["status"]) == (200, "ok")


async def test_an_unexpected_error_is_a_500_problem_that_leaks_nothing(
    settings: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    app = create_app(settings)

    async def broken() -> None:
        raise RuntimeError("SELECT secret FROM vault WHERE password = 'hunter2'")

    app.add_api_route("/api/v1/broken", broken)
    transport = ASGITransport(app=app, raise_app_exceptions=False)
    async with LifespanManager(app), AsyncClient(transport=transport) as client:
        response = await client.get(
            "http://test/api/v1/broken",
            headers={"X-Request-ID": "r-500", "Origin": "https://app.example"},
        )

    problem = assert_problem(response, 500, "internal_error")
    assert "X-Request-ID" in problem["detail"]
    assert response.headers.get_list("x-request-id") == ["r-500"]
    # A browser shows the problem, not a CORS failure.
    assert response.headers["access-control-allow-origin"] == "*"
    assert "hunter2" not in response.text
    assert "SELECT" not in response.text
    assert "Traceback" not in response.text
    logged = [event for event in log_events(capsys) if event.get("request_id") == "r-500"]
    assert [e["status"] for e in logged if e["event"] == "request"] == [500]
    [error] = [e for e in logged if e["event"] == "unhandled_error"]
    assert error["level"] == "error"
    assert "RuntimeError" in error["exception"]  # the traceback is in the log, not the answer
