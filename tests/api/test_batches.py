"""The batches API as a scheduler sees it: submit up to 1,000 audits, follow them, fetch results."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from arq.constants import abort_jobs_ss, job_key_prefix
from arq.jobs import deserialize_job
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from tests.api.checks import assert_nothing_written, assert_problem, queued_jobs, row_counts
from tests.api.support import assert_job_queued
from tests.factories import audit_request, batch_request, criterion, rubric_request

READ_FIELDS = {
    *("id", "tenant", "name", "metadata", "status", "counts", "usage", "created_at"),
    *("finished_at", "rerun_of", "callback_url", "item_events"),
    *("max_cost_usd", "budget_exhausted_at"),
}
RESULT_FIELDS = {"id", "subject", "metadata", "status", "result", "error", "usage"}
NO_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "cost_usd": 0}
T0 = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)  # well before any test runs


def counts(**nonzero: int) -> dict[str, int]:
    every = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    return every | nonzero | {"total": sum(nonzero.values())}


async def submit_batch(client: AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    response = await client.post("/batches", json=body)
    assert response.status_code == 202, response.text
    batch: dict[str, Any] = response.json()
    return batch


async def audit_ids(engine: AsyncEngine, batch_id: str) -> list[str]:
    """The batch's audits in submission order."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT id FROM audit WHERE batch_id = :id ORDER BY batch_index"),
            {"id": batch_id},
        )
        return [str(row.id) for row in rows]


async def finish(engine: AsyncEngine, audit_id: str, status: str, **values: Any) -> None:
    """Leave an audit as a worker would have: `status`, plus any other columns in `values`."""
    columns = {"status": status, **values}
    assignments = ", ".join(f"{name} = :{name}" for name in columns)
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(f"UPDATE audit SET {assignments} WHERE id = :id"), {**columns, "id": audit_id}
        )


def ndjson(text: str) -> list[dict[str, Any]]:
    assert text.endswith("\n")
    return [json.loads(line) for line in text.splitlines()]


# POST /batches


async def test_submit_answers_202_with_location_and_queued_counts(client: AsyncClient) -> None:
    response = await client.post("/batches", json=batch_request(3))

    assert response.status_code == 202, response.text
    batch = response.json()
    assert set(batch) == READ_FIELDS
    assert response.headers["location"] == f"/api/v1/batches/{batch['id']}"
    assert "idempotent-replayed" not in response.headers
    assert (batch["name"], batch["metadata"]) == ("nightly catalogue", {"run": "2026-11-30"})
    assert batch["status"] == "running"
    assert batch["counts"] == counts(queued=3)
    assert batch["usage"] == NO_USAGE
    assert batch["finished_at"] is None
    assert datetime.fromisoformat(batch["created_at"]).tzinfo is not None


async def test_a_batch_of_1000_is_recorded_and_queued_in_one_request(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    batch = await submit_batch(client, batch_request(1000))

    assert batch["counts"] == counts(queued=1000)
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                sa.text("SELECT id, batch_id, batch_index, subject, status FROM audit")
            )
        ).all()
    assert len(rows) == 1000
    assert {str(row.batch_id) for row in rows} == {batch["id"]}
    assert sorted(row.batch_index for row in rows) == list(range(1000))
    assert all(row.subject == f"Page {row.batch_index}" for row in rows)
    assert {row.status for row in rows} == {"queued"}
    job_ids = {f"audit:{row.id}" for row in rows}
    assert await queued_jobs(redis, settings) == job_ids
    assert await redis.exists(*(job_key_prefix + job_id for job_id in job_ids)) == 1000
    some = rows[517]
    job = deserialize_job(await redis.get(f"{job_key_prefix}audit:{some.id}"))
    assert (job.function, job.args) == ("run_audit", (str(some.id),))


async def test_items_naming_a_rubric_get_a_snapshot_of_the_version_they_ask_for(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    await client.post("/rubrics", json=rubric_request())
    await client.post("/rubrics", json=rubric_request(criteria=[criterion("v2_only")]))
    inline, latest, first = (
        audit_request(),
        audit_request(criteria=None, rubric="green_claims"),
        audit_request(criteria=None, rubric="green_claims", rubric_version=1),
    )
    batch = await submit_batch(client, batch_request(audits=[inline, latest, first, latest]))

    listed = (await client.get("/audits", params={"batch_id": batch["id"]})).json()["items"]
    by_id = {audit["id"]: audit for audit in listed}
    snapshots = [by_id[audit_id] for audit_id in await audit_ids(engine, batch["id"])]
    assert [(a["rubric"], a["rubric_version"]) for a in snapshots] == [
        (None, None),
        ("green_claims", 2),
        ("green_claims", 1),
        ("green_claims", 2),
    ]
    assert [[c["id"] for c in a["criteria"]] for a in snapshots] == [
        ["claims_substantiated", "no_vague_terms"],
        ["v2_only"],
        ["claims_substantiated", "no_vague_terms"],
        ["v2_only"],
    ]


# Bad input: nothing is written


@pytest.mark.parametrize("size", [0, 1001])
async def test_a_batch_of_no_audits_or_too_many_is_refused(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    size: int,
) -> None:
    response = await client.post("/batches", json=batch_request(size))

    body = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in body["errors"]] == [["body", "audits"]]
    await assert_nothing_written(engine, redis, settings)


@pytest.mark.parametrize(
    ("item", "field"),
    [
        (audit_request(content=""), "content"),
        (audit_request(subject="x" * 201), "subject"),
        (audit_request(criteria=[criterion("Not A Slug")]), "criteria"),
        (audit_request(metadata={"blob": "x" * 17_000}), "metadata"),
        (audit_request(colour="green"), "colour"),
    ],
)
async def test_one_invalid_item_refuses_the_whole_batch_and_names_its_index(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    item: dict[str, Any],
    field: str,
) -> None:
    body = batch_request(1000)
    body["audits"][517] = item

    response = await client.post("/batches", json=body)

    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"][:4] for error in problem["errors"]] == [["body", "audits", 517, field]]
    assert "517" in problem["detail"]
    await assert_nothing_written(engine, redis, settings)


async def test_an_item_naming_an_unknown_rubric_refuses_the_whole_batch(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    await client.post("/rubrics", json=rubric_request())
    body = batch_request(10)
    body["audits"][3] = audit_request(criteria=None, rubric="green_claims")
    body["audits"][7] = audit_request(criteria=None, rubric="no_such_rubric")

    response = await client.post("/batches", json=body)

    problem = assert_problem(response, 422, "rubric_not_found")
    assert "no_such_rubric" in problem["detail"]
    assert problem["detail"].startswith("audits[7]: ")
    assert [error["loc"] for error in problem["errors"]] == [["body", "audits", 7, "rubric"]]
    await assert_nothing_written(engine, redis, settings, rubrics=1)


async def test_an_item_naming_an_unknown_rubric_version_refuses_the_whole_batch(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    await client.post("/rubrics", json=rubric_request())
    body = batch_request(2)
    body["audits"][1] = audit_request(criteria=None, rubric="green_claims", rubric_version=2)

    response = await client.post("/batches", json=body)

    assert_problem(response, 422, "rubric_not_found")
    await assert_nothing_written(engine, redis, settings, rubrics=1)


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        ({"priority": "high"}, ["body", "priority"]),
        ({"metadata": {"blob": "x" * 17_000}}, ["body", "metadata"]),
        ({"metadata": ["not", "an", "object"]}, ["body", "metadata"]),
        ({"name": ""}, ["body", "name"]),
        ({"audits": "all of them"}, ["body", "audits"]),
    ],
)
async def test_invalid_batch_fields_are_refused(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    overrides: dict[str, Any],
    loc: list[str],
) -> None:
    response = await client.post("/batches", json=batch_request(2, **overrides))

    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [loc]
    await assert_nothing_written(engine, redis, settings)


# GET /batches/{id}


async def test_status_is_running_until_every_audit_ends_then_completed(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    batch = await submit_batch(client, batch_request(3))
    first, second, third = await audit_ids(engine, batch["id"])
    await finish(
        engine,
        first,
        "succeeded",
        finished_at=T0 + timedelta(minutes=5),
        prompt_tokens=100,
        completion_tokens=20,
        cost_usd=Decimal("0.000027"),
    )
    await finish(engine, second, "running", started_at=T0)

    running = (await client.get(f"/batches/{batch['id']}")).json()
    assert running["status"] == "running"
    assert running["counts"] == counts(queued=1, running=1, succeeded=1)
    assert running["finished_at"] is None

    await finish(engine, second, "failed", finished_at=T0 + timedelta(minutes=9))
    await finish(engine, third, "succeeded", finished_at=T0 + timedelta(minutes=7))
    response = await client.get(f"/batches/{batch['id']}")

    assert response.status_code == 200
    completed = response.json()
    assert completed["status"] == "completed"
    assert completed["counts"] == counts(succeeded=2, failed=1)
    assert datetime.fromisoformat(completed["finished_at"]) == T0 + timedelta(minutes=9)
    assert completed["usage"] == {
        "prompt_tokens": 100,
        "completion_tokens": 20,
        "total_tokens": 120,
        "cost_usd": 0.000027,
    }
    assert (completed["id"], completed["created_at"]) == (batch["id"], batch["created_at"])


async def test_a_cancelled_audit_alone_does_not_make_the_batch_cancelled(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    batch = await submit_batch(client, batch_request(2))
    first, second = await audit_ids(engine, batch["id"])

    assert (await client.post(f"/audits/{first}/cancel")).status_code == 200
    await finish(engine, second, "succeeded", finished_at=T0)

    read = (await client.get(f"/batches/{batch['id']}")).json()
    assert read["status"] == "completed"
    assert read["counts"] == counts(succeeded=1, cancelled=1)


# POST /batches/{id}/cancel


async def test_cancel_stops_only_unfinished_audits_and_aborts_their_jobs(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis
) -> None:
    batch = await submit_batch(client, batch_request(4))
    succeeded, failed, running, queued = await audit_ids(engine, batch["id"])
    await finish(engine, succeeded, "succeeded", finished_at=T0)
    await finish(engine, failed, "failed", finished_at=T0, error_code="model_refused")
    await finish(engine, running, "running", started_at=T0)

    response = await client.post(f"/batches/{batch['id']}/cancel")

    assert response.status_code == 200, response.text
    cancelled = response.json()
    assert cancelled["status"] == "cancelled"
    assert cancelled["counts"] == counts(succeeded=1, failed=1, cancelled=2)
    assert datetime.fromisoformat(cancelled["finished_at"]) > T0  # the cancel itself, just now
    listed = (await client.get("/audits", params={"batch_id": batch["id"]})).json()["items"]
    statuses = {audit["id"]: audit["status"] for audit in listed}
    assert [statuses[i] for i in (succeeded, failed, running, queued)] == [
        "succeeded",
        "failed",
        "cancelled",
        "cancelled",
    ]
    aborted = {member.decode() for member in await redis.zrange(abort_jobs_ss, 0, -1)}
    assert {f"audit:{running}", f"audit:{queued}"} <= aborted
    assert not {f"audit:{succeeded}", f"audit:{failed}"} & aborted
    again = (await client.get(f"/batches/{batch['id']}")).json()
    assert (again["status"], again["finished_at"]) == ("cancelled", cancelled["finished_at"])


async def test_cancelling_twice_changes_nothing_more(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    batch = await submit_batch(client, batch_request(2))

    first = (await client.post(f"/batches/{batch['id']}/cancel")).json()
    second = await client.post(f"/batches/{batch['id']}/cancel")

    assert second.status_code == 200
    assert second.json() == first
    assert first["counts"] == counts(cancelled=2)


async def test_cancelling_a_batch_that_already_ended_leaves_it_completed(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis
) -> None:
    batch = await submit_batch(client, batch_request(2))
    for audit_id in await audit_ids(engine, batch["id"]):
        await finish(engine, audit_id, "succeeded", finished_at=T0)

    response = await client.post(f"/batches/{batch['id']}/cancel")

    assert response.status_code == 200, response.text
    assert response.json()["status"] == "completed"
    assert response.json()["counts"] == counts(succeeded=2)
    assert datetime.fromisoformat(response.json()["finished_at"]) == T0
    assert (await client.get(f"/batches/{batch['id']}")).json()["status"] == "completed"
    aborted = {member.decode() for member in await redis.zrange(abort_jobs_ss, 0, -1)}
    assert not aborted & {f"audit:{audit_id}" for audit_id in await audit_ids(engine, batch["id"])}


# GET /batches


async def test_list_walks_every_batch_once_newest_first(client: AsyncClient) -> None:
    created = [(await submit_batch(client, batch_request(1, name=f"b{i}")))["id"] for i in range(5)]

    seen: list[str] = []
    page_sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/batches", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        page_sizes.append(len(page["items"]))
        seen += [batch["id"] for batch in page["items"]]
        assert all(batch["counts"] == counts(queued=1) for batch in page["items"])
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == created[::-1]
    assert page_sizes == [2, 2, 1]


async def test_list_refuses_a_cursor_it_did_not_issue(client: AsyncClient) -> None:
    assert_problem(await client.get("/batches?cursor=bm90LWEtY3Vyc29y"), 422, "invalid_cursor")


# GET /audits?batch_id=


async def test_audits_can_be_listed_by_batch(client: AsyncClient) -> None:
    small = await submit_batch(client, batch_request(2))
    large = await submit_batch(client, batch_request(3))
    assert (await client.post("/audits", json=audit_request())).status_code == 202

    for batch, size in ((small, 2), (large, 3)):
        response = await client.get("/audits", params={"batch_id": batch["id"]})
        items = response.json()["items"]
        assert len(items) == size
        assert {audit["batch_id"] for audit in items} == {batch["id"]}
    everything = (await client.get("/audits")).json()["items"]
    assert len(everything) == 6


# GET /batches/{id}/results


async def test_results_stream_one_line_per_audit_in_submission_order(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    body = batch_request(4)
    for index, item in enumerate(body["audits"]):
        item["metadata"] = {"row": index}
    batch = await submit_batch(client, body)
    succeeded, failed, _, cancelled = await audit_ids(engine, batch["id"])
    result = {"score": 80.0, "verdict": "pass", "summary": "Fine.", "findings": []}
    await finish(
        engine,
        succeeded,
        "succeeded",
        result=json.dumps(result),
        prompt_tokens=100,
        completion_tokens=20,
        cost_usd=Decimal("0.000027"),
    )
    await finish(
        engine, failed, "failed", error_code="invalid_model_output", error_message="bad JSON"
    )
    await finish(engine, cancelled, "cancelled")

    response = await client.get(f"/batches/{batch['id']}/results")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    lines = ndjson(response.text)
    assert all(set(line) == RESULT_FIELDS for line in lines)
    assert [line["id"] for line in lines] == await audit_ids(engine, batch["id"])
    assert [line["subject"] for line in lines] == ["Page 0", "Page 1", "Page 2", "Page 3"]
    assert [line["metadata"] for line in lines] == [{"row": i} for i in range(4)]
    assert [line["status"] for line in lines] == ["succeeded", "failed", "queued", "cancelled"]
    assert [line["result"] for line in lines] == [result, None, None, None]
    assert [line["error"] for line in lines] == [
        None,
        {"code": "invalid_model_output", "message": "bad JSON"},
        None,
        None,
    ]
    assert [line["usage"] for line in lines] == [
        {"prompt_tokens": 100, "completion_tokens": 20, "total_tokens": 120, "cost_usd": 0.000027},
        None,
        None,
        None,
    ]


async def test_results_lines_survive_clients_that_split_on_every_line_break(
    client: AsyncClient,
) -> None:
    odd = "Line\u2028separator, paragraph\u2029separator, next\x85line"
    body = batch_request(2)
    body["audits"][0] |= {"subject": odd, "metadata": {"note": odd}}
    batch = await submit_batch(client, body)

    async with client.stream("GET", f"/batches/{batch['id']}/results") as response:
        lines = [json.loads(line) async for line in response.aiter_lines()]

    assert [(line["subject"], line["metadata"]) for line in lines] == [
        (odd, {"note": odd}),
        ("Page 1", {"sku": "TB-01"}),
    ]


async def test_results_of_a_1000_audit_batch_are_1000_lines(client: AsyncClient) -> None:
    batch = await submit_batch(client, batch_request(1000))

    response = await client.get(f"/batches/{batch['id']}/results")

    assert response.status_code == 200
    lines = ndjson(response.text)
    assert [line["subject"] for line in lines] == [f"Page {i}" for i in range(1000)]
    assert len({line["id"] for line in lines}) == 1000


# Unknown and malformed ids


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/cancel"), ("GET", "/results")]
)
async def test_an_unknown_batch_is_404(client: AsyncClient, method: str, suffix: str) -> None:
    response = await client.request(method, f"/batches/{uuid4()}{suffix}")

    assert_problem(response, 404, "batch_not_found")


@pytest.mark.parametrize(
    ("method", "suffix"), [("GET", ""), ("POST", "/cancel"), ("GET", "/results")]
)
async def test_a_malformed_batch_id_is_422(client: AsyncClient, method: str, suffix: str) -> None:
    response = await client.request(method, f"/batches/not-a-uuid{suffix}")

    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [["path", "batch_id"]]


async def test_cancelling_an_unknown_batch_writes_nothing(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    await client.post(f"/batches/{uuid4()}/cancel")

    assert await row_counts(engine) == {"audit": 0, "batch": 0, "rubric": 0}


# POST /batches/{id}/retry


async def test_retry_requeues_the_failed_audits_in_one_call(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    batch = await submit_batch(client, batch_request(4))
    succeeded, failed, other_failed, cancelled = await audit_ids(engine, batch["id"])
    await finish(engine, succeeded, "succeeded", finished_at=T0)
    for audit_id in (failed, other_failed):
        await finish(engine, audit_id, "failed", finished_at=T0, error_code="model_refused")
    await finish(engine, cancelled, "cancelled", finished_at=T0)
    # The jobs of the submission are gone, as once the audits have run.
    await redis.delete(
        settings.queue_name, *(job_key_prefix + f"audit:{i}" for i in (failed, other_failed))
    )

    response = await client.post(f"/batches/{batch['id']}/retry")

    assert response.status_code == 202, response.text
    retried = response.json()
    assert retried["requeued"] == {"failed": 2, "cancelled": 0}
    assert retried["batch"]["counts"] == counts(succeeded=1, queued=2, cancelled=1)
    assert retried["batch"]["status"] == "running"
    for audit_id in (failed, other_failed):
        audit = (await client.get(f"/audits/{audit_id}")).json()
        assert (audit["status"], audit["error"]) == ("queued", None)
        await assert_job_queued(redis, settings, audit_id)


async def test_retry_with_include_cancelled_takes_the_cancellation_back(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    batch = await submit_batch(client, batch_request(2))
    first, second = await audit_ids(engine, batch["id"])
    await client.post(f"/batches/{batch['id']}/cancel")
    await finish(engine, first, "failed", finished_at=T0, error_code="model_refused")

    response = await client.post(f"/batches/{batch['id']}/retry", params={"include": "cancelled"})

    retried = response.json()
    assert retried["requeued"] == {"failed": 1, "cancelled": 1}
    assert retried["batch"]["counts"] == counts(queued=2)
    await finish(engine, first, "succeeded", finished_at=T0)
    await finish(engine, second, "succeeded", finished_at=T0)
    assert (await client.get(f"/batches/{batch['id']}")).json()["status"] == "completed"


async def test_retry_of_a_batch_with_nothing_failed_changes_nothing(client: AsyncClient) -> None:
    batch = await submit_batch(client, batch_request(2))

    response = await client.post(f"/batches/{batch['id']}/retry")

    assert response.status_code == 202
    assert response.json()["requeued"] == {"failed": 0, "cancelled": 0}
    assert response.json()["batch"]["counts"] == counts(queued=2)


async def test_retry_of_an_unknown_batch_is_a_404(client: AsyncClient) -> None:
    response = await client.post(f"/batches/{uuid4()}/retry")

    assert response.status_code == 404
    assert response.json()["code"] == "batch_not_found"
