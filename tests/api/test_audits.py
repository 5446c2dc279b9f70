"""The audits API as a client sees it: every route, its status codes, headers and bodies."""

from datetime import datetime
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss
from httpx import AsyncClient

from shared.config import Settings
from shared.db import SessionFactory
from tests.api.checks import assert_problem, queued_jobs
from tests.api.conftest import NothingWritten
from tests.api.support import assert_job_queued, submit
from tests.factories import audit_request, criterion
from tests.fixtures.jobs import forget_job
from tests.rows import load_audit, update_audit

READ_FIELDS = {
    "tenant",
    "id",
    "status",
    "subject",
    "model",
    "criteria",
    "priority",
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
    "samples",
    "rerun_of",
    "provenance",
    "callback_url",
}
TERMINAL = ("succeeded", "failed", "cancelled")


async def move_to(
    factory: SessionFactory, audit_id: str, status: str, *, attempts: int = 0
) -> None:
    """Put an audit in `status` as a worker would have left it (the API never runs one)."""
    finished = {"finished_at": sa.func.now()} if status in TERMINAL else {}
    failed = {"error_code": "rate_limited", "error_message": "429 from the provider"}
    await update_audit(
        factory,
        audit_id,
        status=status,
        attempts=attempts,
        **finished,
        **(failed if status == "failed" else {}),
    )


# POST /audits


async def test_submit_answers_202_with_location_and_the_queued_audit(
    client: AsyncClient, session_factory: SessionFactory
) -> None:
    response = await client.post("/audits", json=audit_request())

    assert response.status_code == 202, response.text
    body = response.json()
    assert set(body) == READ_FIELDS  # the content is only on GET /audits/{id}
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
    assert (body["started_at"], body["finished_at"]) == (None, None)
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    row = await load_audit(session_factory, body["id"])
    assert row.status == "queued"
    assert row.content == "Our toothbrush is 100% biodegradable and carbon neutral."
    assert row.pass_threshold == 70
    assert row.attempt_limit == 5


async def test_submit_enqueues_one_job_per_accepted_audit_after_commit(
    client: AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    first = await submit(client)
    second = await submit(client, subject="Second page")

    for audit in (first, second):
        await assert_job_queued(redis, settings, audit["id"])
    assert await queued_jobs(redis, settings) == {f"audit:{first['id']}", f"audit:{second['id']}"}


async def test_submit_stores_the_threshold_asked_for(
    client: AsyncClient, session_factory: SessionFactory
) -> None:
    audit = await submit(client, pass_threshold=82.5)

    assert (await load_audit(session_factory, audit["id"])).pass_threshold == 82.5


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
    client: AsyncClient, session_factory: SessionFactory
) -> None:
    audit = await submit(client)
    await move_to(session_factory, audit["id"], "failed", attempts=5)

    body = (await client.get(f"/audits/{audit['id']}")).json()

    assert body["status"] == "failed"
    assert body["attempts"] == 5
    assert body["error"] == {"code": "rate_limited", "message": "429 from the provider"}
    assert body["finished_at"] is not None


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/audits/{id}"), ("POST", "/audits/{id}/cancel"), ("POST", "/audits/{id}/retry")],
)
async def test_unknown_audit_is_404_audit_not_found(
    client: AsyncClient, nothing_written: NothingWritten, method: str, path: str
) -> None:
    unknown = uuid4()

    response = await client.request(method, path.format(id=unknown))

    body = assert_problem(response, 404, "audit_not_found")
    assert str(unknown) in body["detail"]
    await nothing_written()


# GET /audits


async def test_list_is_items_and_next_cursor_newest_first(client: AsyncClient) -> None:
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


async def test_list_pages_by_limit(client: AsyncClient) -> None:
    ids = [(await submit(client, subject=f"page {n}"))["id"] for n in range(3)]

    first = (await client.get("/audits", params={"limit": 2})).json()
    cursor = first["next_cursor"]
    second = (await client.get("/audits", params={"limit": 2, "cursor": cursor})).json()

    assert [item["id"] for item in first["items"]] == [ids[2], ids[1]]
    assert [item["id"] for item in second["items"]] == [ids[0]]
    assert second["next_cursor"] is None


# POST /audits/{id}/cancel


@pytest.mark.parametrize("status", ["queued", "running"])
async def test_cancel_an_unfinished_audit(
    client: AsyncClient, session_factory: SessionFactory, redis: ArqRedis, status: str
) -> None:
    audit = await submit(client)
    await move_to(session_factory, audit["id"], status, attempts=int(status == "running"))

    response = await client.post(f"/audits/{audit['id']}/cancel")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None
    assert (await client.get(f"/audits/{audit['id']}")).json()["status"] == "cancelled"
    # The job is told to stop, after the commit: a running model call is aborted.
    assert await redis.zscore(abort_jobs_ss, f"audit:{audit['id']}") is not None


@pytest.mark.parametrize("status", TERMINAL)
async def test_cancel_a_finished_audit_is_409(
    client: AsyncClient, session_factory: SessionFactory, redis: ArqRedis, status: str
) -> None:
    audit = await submit(client)
    await move_to(session_factory, audit["id"], status)

    response = await client.post(f"/audits/{audit['id']}/cancel")

    body = assert_problem(response, 409, "audit_not_cancellable")
    assert f"already {status}" in body["detail"]
    assert body["audit_status"] == status
    assert (await client.get(f"/audits/{audit['id']}")).json()["status"] == status
    assert await redis.zscore(abort_jobs_ss, f"audit:{audit['id']}") is None


# POST /audits/{id}/retry


async def test_retry_a_failed_audit_queues_it_again(
    client: AsyncClient, session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    audit = await submit(client)
    # The first run's job is gone, as it is once a worker ran it (`keep_result=0`).
    await forget_job(redis, settings, f"audit:{audit['id']}")
    await move_to(session_factory, audit["id"], "failed", attempts=5)

    response = await client.post(f"/audits/{audit['id']}/retry")

    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/api/v1/audits/{audit['id']}"
    body = response.json()
    assert body["status"] == "queued"
    assert (body["error"], body["finished_at"], body["result"]) == (None, None, None)
    assert body["attempts"] == 5
    await assert_job_queued(redis, settings, audit["id"])


async def test_retry_a_cancelled_audit_clears_the_abort_mark(
    client: AsyncClient, redis: ArqRedis, settings: Settings
) -> None:
    audit = await submit(client)
    cancelled = await client.post(f"/audits/{audit['id']}/cancel")
    assert cancelled.json()["status"] == "cancelled"

    response = await client.post(f"/audits/{audit['id']}/retry")

    assert response.status_code == 202, response.text
    assert response.json()["status"] == "queued"
    await assert_job_queued(redis, settings, audit["id"])
    assert await redis.zscore(abort_jobs_ss, f"audit:{audit['id']}") is None


@pytest.mark.parametrize("status", ["queued", "running", "succeeded"])
async def test_retry_an_audit_that_did_not_fail_is_409(
    client: AsyncClient, session_factory: SessionFactory, status: str
) -> None:
    audit = await submit(client)
    await move_to(session_factory, audit["id"], status)

    response = await client.post(f"/audits/{audit['id']}/retry")

    body = assert_problem(response, 409, "audit_not_retryable")
    assert f"is {status}" in body["detail"]
    assert body["audit_status"] == status
    assert (await client.get(f"/audits/{audit['id']}")).json()["status"] == status


# Request ids, CORS, problem details


async def test_request_id_is_echoed_and_stored_on_the_audit(
    client: AsyncClient, session_factory: SessionFactory
) -> None:
    response = await client.post(
        "/audits", json=audit_request(), headers={"X-Request-ID": "trace-42.a:b_c"}
    )

    assert response.headers["x-request-id"] == "trace-42.a:b_c"
    audit = await load_audit(session_factory, response.json()["id"])
    assert audit.request_id == "trace-42.a:b_c"


@pytest.mark.parametrize("given", [None, "", "has spaces", "x" * 129, 'quote"d'])
async def test_request_id_is_generated_when_missing_or_unusable(
    client: AsyncClient, session_factory: SessionFactory, given: str | None
) -> None:
    headers = {} if given is None else {"X-Request-ID": given}

    response = await client.post("/audits", json=audit_request(), headers=headers)

    generated = response.headers["x-request-id"]
    assert generated != given
    assert UUID(hex=generated)
    audit = await load_audit(session_factory, response.json()["id"])
    assert audit.request_id == generated


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
    assert "idempotency-key" in response.headers["access-control-allow-headers"].lower()


async def test_cors_exposes_location_and_request_id(client: AsyncClient) -> None:
    response = await client.post(
        "/audits", json=audit_request(), headers={"Origin": "https://example.com"}
    )

    assert response.headers["access-control-allow-origin"] in ("*", "https://example.com")
    exposed = response.headers["access-control-expose-headers"].lower()
    assert {"location", "x-request-id"} <= {name.strip() for name in exposed.split(",")}


async def test_unknown_route_is_a_problem_detail(client: AsyncClient) -> None:
    response = await client.get("/nothing-here")

    assert_problem(response, 404, "not_found")


async def test_wrong_method_is_a_problem_detail(client: AsyncClient) -> None:
    response = await client.delete(f"/audits/{uuid4()}")

    assert_problem(response, 405, "method_not_allowed")
    assert "GET" in response.headers["allow"]
