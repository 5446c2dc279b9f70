"""The audits API as a client sees it: every route, its status codes, headers and bodies."""

import json
from datetime import datetime
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.jobs import deserialize_job
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from tests.api.conftest import ClientFactory, Stored
from tests.factories import audit_request, criterion

READ_FIELDS = {
    "id",
    "status",
    "subject",
    "model",
    "criteria",
    "rubric",
    "rubric_version",
    "metadata",
    "batch_id",
    "attempts",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "result",
    "error",
    "usage",
}


async def submit(client: AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/audits", json=audit_request(**overrides))
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def set_status(engine: AsyncEngine, audit_id: str, status: str, **values: Any) -> None:
    """Move an audit as a worker would have (the API alone never runs one)."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.text("UPDATE audit SET status = :status, attempts = :attempts WHERE id = :id"),
            {"status": status, "id": audit_id, "attempts": values.get("attempts", 0)},
        )
        if "error_code" in values:
            await connection.execute(
                sa.text("UPDATE audit SET error_code = :code, error_message = 'boom' WHERE id = :id"),
                {"code": values["error_code"], "id": audit_id},
            )


def log_events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines the app wrote to stdout (an app built in the test logs there)."""
    lines = capsys.readouterr().out.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


def assert_problem(response: Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["code"] == code
    assert body["type"].endswith("/" + code)
    assert body["title"]
    assert body["detail"]
    return body


async def assert_job_queued(redis: ArqRedis, settings: Settings, audit_id: str) -> None:
    """`run_audit(<id>)` is in Redis under `audit:<id>` and waits in this app's queue."""
    job_id = f"audit:{audit_id}"
    raw = await redis.get(job_key_prefix + job_id)
    assert raw is not None, f"no job {job_id}"
    job = deserialize_job(raw)
    assert (job.function, job.args) == ("run_audit", (audit_id,))
    assert await redis.zscore(settings.queue_name, job_id) is not None


# POST /audits


async def test_submit_answers_202_with_location_and_the_queued_audit(
    client: AsyncClient, stored: Stored
) -> None:
    response = await client.post("/audits", json=audit_request())

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == READ_FIELDS  # no content in the representation of a submit
    assert response.headers["location"] == f"/api/v1/audits/{body['id']}"
    assert body["status"] == "queued"
    assert body["subject"] == "Product page: bamboo toothbrush"
    assert body["model"] == "gpt-4o-mini"
    assert body["criteria"] == [
        criterion() | {"weight": 1.0},
        criterion("no_vague_terms", weight=2.0),
    ]
    assert body["metadata"] == {"sku": "TB-01"}
    assert body["attempts"] == 0
    assert (body["result"], body["error"], body["usage"]) == (None, None, None)
    assert (body["rubric"], body["rubric_version"], body["batch_id"]) == (None, None, None)
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    assert await stored.audit_count() == 1


async def test_submit_enqueues_one_job_per_accepted_audit_after_commit(
    client: AsyncClient, stored: Stored, redis: ArqRedis, settings: Settings
) -> None:
    first = await submit(client)
    second = await submit(client, subject="Second page")

    for audit in (first, second):
        await assert_job_queued(redis, settings, audit["id"])
    assert await stored.queued_job_ids() == sorted(
        [f"audit:{first['id']}", f"audit:{second['id']}"]
    )


async def test_submit_stores_what_was_sent(client: AsyncClient, stored: Stored) -> None:
    audit = await submit(client, pass_threshold=80)

    row = await stored.audit_row(audit["id"])

    assert row["content"] == "Our toothbrush is 100% biodegradable and carbon neutral."
    assert row["metadata"] == {"sku": "TB-01"}
    assert row["pass_threshold"] == 80
    assert row["attempt_limit"] == 5


async def test_submit_with_redis_down_still_accepts_and_warns(
    client_with: ClientFactory, stored: Stored, capsys: pytest.CaptureFixture[str]
) -> None:
    async with client_with(redis_url="redis://127.0.0.1:1/0") as client:
        response = await client.post("/audits", json=audit_request())

    assert response.status_code == 202, response.text
    audit_id = response.json()["id"]
    assert (await stored.audit_row(audit_id))["status"] == "queued"
    failed = [e for e in log_events(capsys) if e["event"] == "enqueue_failed"]
    assert len(failed) == 1
    assert failed[0]["level"] == "warning"
    assert failed[0]["audit_ids"] == [audit_id]
    assert failed[0]["request_id"] == response.headers["x-request-id"]


# GET /audits/{id}


async def test_get_returns_the_audit_with_its_content(client: AsyncClient) -> None:
    audit = await submit(client)

    response = await client.get(f"/audits/{audit['id']}")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == READ_FIELDS | {"content"}
    assert body["content"] == "Our toothbrush is 100% biodegradable and carbon neutral."
    assert {k: v for k, v in body.items() if k != "content"} == audit


async def test_get_shows_the_error_of_a_failed_audit(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    audit = await submit(client)
    await set_status(engine, audit["id"], "failed", attempts=5, error_code="rate_limited")

    body = (await client.get(f"/audits/{audit['id']}")).json()

    assert body["status"] == "failed"
    assert body["attempts"] == 5
    assert body["error"] == {"code": "rate_limited", "message": "boom"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/audits/{id}"),
        ("POST", "/audits/{id}/cancel"),
        ("POST", "/audits/{id}/retry"),
    ],
)
async def test_unknown_audit_is_404_audit_not_found(
    client: AsyncClient, stored: Stored, method: str, path: str
) -> None:
    unknown = uuid4()

    response = await client.request(method, path.format(id=unknown))

    body = assert_problem(response, 404, "audit_not_found")
    assert str(unknown) in body["detail"]
    await stored.assert_nothing()


# GET /audits


async def test_list_shape_is_items_and_next_cursor_newest_first(client: AsyncClient) -> None:
    ids = [(await submit(client, subject=f"page {n}"))["id"] for n in range(3)]

    response = await client.get("/audits")

    assert response.status_code == 200
    body = response.json()
    assert set(body) == {"items", "next_cursor"}
    assert [item["id"] for item in body["items"]] == ids[::-1]
    assert all(set(item) == READ_FIELDS for item in body["items"])  # no content in lists
    assert body["next_cursor"] is None


async def test_list_of_nothing_is_empty(client: AsyncClient) -> None:
    response = await client.get("/audits")

    assert response.json() == {"items": [], "next_cursor": None}


# POST /audits/{id}/cancel


@pytest.mark.parametrize("status", ["queued", "running"])
async def test_cancel_an_unfinished_audit(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, status: str
) -> None:
    audit = await submit(client)
    await set_status(engine, audit["id"], status, attempts=1 if status == "running" else 0)

    response = await client.post(f"/audits/{audit['id']}/cancel")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert (await client.get(f"/audits/{audit['id']}")).json()["status"] == "cancelled"
    # The running job (if any) is asked to stop.
    assert await redis.zscore(abort_jobs_ss, f"audit:{audit['id']}") is not None


@pytest.mark.parametrize("status", ["succeeded", "failed", "cancelled"])
async def test_cancel_a_finished_audit_is_409(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, status: str
) -> None:
    audit = await submit(client)
    await set_status(engine, audit["id"], status)

    response = await client.post(f"/audits/{audit['id']}/cancel")

    body = assert_problem(response, 409, "audit_not_cancellable")
    assert status in body["detail"]
    assert body["status"] == 409
    current = (await client.get(f"/audits/{audit['id']}")).json()
    assert current["status"] == status
    assert await redis.zscore(abort_jobs_ss, f"audit:{audit['id']}") is None


# POST /audits/{id}/retry


async def test_retry_a_failed_audit_queues_it_again(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    audit = await submit(client)
    await redis.flushdb()  # the first run's job is gone, as it would be after it ran
    await set_status(engine, audit["id"], "failed", attempts=5, error_code="rate_limited")

    response = await client.post(f"/audits/{audit['id']}/retry")

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/audits/{audit['id']}"
    body = response.json()
    assert body["status"] == "queued"
    assert body["error"] is None
    assert body["finished_at"] is None
    assert body["attempts"] == 5
    await assert_job_queued(redis, settings, audit["id"])


async def test_retry_a_cancelled_audit_clears_the_abort_mark(
    client: AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    audit = await submit(client)
    await client.post(f"/audits/{audit['id']}/cancel")

    response = await client.post(f"/audits/{audit['id']}/retry")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    await assert_job_queued(redis, settings, audit["id"])
    assert await redis.zscore(abort_jobs_ss, f"audit:{audit['id']}") is None


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
async def test_retry_an_audit_that_did_not_fail_is_409(
    client: AsyncClient, engine: AsyncEngine, status: str
) -> None:
    audit = await submit(client)
    await set_status(engine, audit["id"], status)

    response = await client.post(f"/audits/{audit['id']}/retry")

    body = assert_problem(response, 409, "audit_not_retryable")
    assert status in body["detail"]
    assert (await client.get(f"/audits/{audit['id']}")).json()["status"] == status


# Request ids, CORS, problem details


async def test_request_id_is_echoed_and_stored_on_the_audit(
    client: AsyncClient, stored: Stored
) -> None:
    response = await client.post(
        "/audits", json=audit_request(), headers={"X-Request-ID": "trace-42.a:b_c"}
    )

    assert response.headers["x-request-id"] == "trace-42.a:b_c"
    row = await stored.audit_row(response.json()["id"])
    assert row["request_id"] == "trace-42.a:b_c"


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 129, "quote\"d"])
async def test_request_id_is_generated_when_missing_or_unusable(
    client: AsyncClient, stored: Stored, given: str | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}

    response = await client.post("/audits", json=audit_request(), headers=headers)

    generated = response.headers["x-request-id"]
    assert generated != given
    assert UUID(hex=generated)
    assert (await stored.audit_row(response.json()["id"]))["request_id"] == generated


async def test_request_ids_differ_between_requests(client: AsyncClient) -> None:
    first = await client.get("/audits")
    second = await client.get("/audits")

    assert first.headers["x-request-id"] != second.headers["x-request-id"]


async def test_error_responses_carry_the_request_id(client: AsyncClient) -> None:
    response = await client.get(f"/audits/{uuid4()}", headers={"X-Request-ID": "req-404"})

    assert response.status_code == 404
    assert response.headers["x-request-id"] == "req-404"


@pytest.mark.parametrize("origin", ["https://example.com", "http://localhost:3000"])
async def test_cors_preflight_is_allowed_for_any_origin(client: AsyncClient, origin: str) -> None:
    response = await client.options(
        "/audits",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type, idempotency-key, x-request-id",
        },
    )

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", origin)
    assert "POST" in response.headers["access-control-allow-methods"]
    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert "idempotency-key" in allowed_headers


async def test_cors_exposes_location_and_request_id(client: AsyncClient) -> None:
    response = await client.post(
        "/audits", json=audit_request(), headers={"Origin": "https://example.com"}
    )

    assert response.headers["access-control-allow-origin"] in ("*", "https://example.com")
    exposed = response.headers["access-control-expose-headers"].lower()
    assert {"location", "x-request-id"} <= {h.strip() for h in exposed.split(",")}


async def test_unknown_route_is_a_problem_detail(client: AsyncClient) -> None:
    response = await client.get("/nothing-here")

    assert_problem(response, 404, "not_found")


async def test_wrong_method_is_a_problem_detail(client: AsyncClient) -> None:
    response = await client.delete(f"/audits/{uuid4()}")

    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
