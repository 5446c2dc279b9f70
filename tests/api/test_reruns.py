"""`POST /audits/{id}/rerun` and `POST /batches/{id}/rerun`: the same inputs, a new run."""

from typing import Any
from uuid import uuid4

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.queue import audit_job_id
from tests.api.checks import assert_problem, queued_jobs
from tests.api.conftest import ClientFactory
from tests.factories import audit_request, batch_request, criterion, rubric_request

INPUTS = ("subject", "model", "criteria", "rubric", "rubric_version", "metadata", "samples")


async def submit(client: AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/audits", json=audit_request(**overrides))
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def finish(engine: AsyncEngine, audit_id: str) -> None:
    """Leave the audit succeeded with some provenance, as a worker would."""
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "UPDATE audit SET status = 'succeeded', finished_at = now(), result = '{}', "
                "served_model = 'gpt-4o-mini-2024-07-18', provider_request_id = 'req-1' "
                "WHERE id = :id"
            ),
            {"id": audit_id},
        )


async def stored_inputs(engine: AsyncEngine, audit_id: str) -> dict[str, Any]:
    """What the audit stores of its inputs beyond the representation."""
    async with engine.connect() as connection:
        row = await connection.execute(
            sa.text("SELECT content, pass_threshold FROM audit WHERE id = :id"),
            {"id": audit_id},
        )
        return dict(row.mappings().one())


async def test_a_rerun_is_a_new_queued_audit_of_the_same_inputs(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    original = await submit(
        client, samples=3, pass_threshold=55, criteria=[criterion(weight=4)], metadata={"k": 1}
    )
    await finish(engine, original["id"])

    response = await client.post(f"/audits/{original['id']}/rerun")

    assert response.status_code == 202, response.text
    rerun = response.json()
    assert response.headers["Location"] == f"/api/v1/audits/{rerun['id']}"
    assert rerun["id"] != original["id"]
    assert rerun["rerun_of"] == original["id"]
    assert {k: rerun[k] for k in INPUTS} == {k: original[k] for k in INPUTS}
    assert (rerun["status"], rerun["attempts"], rerun["provenance"]) == ("queued", 0, None)
    assert rerun["priority"] == "interactive"
    assert await stored_inputs(engine, rerun["id"]) == await stored_inputs(engine, original["id"])
    assert audit_job_id(rerun["id"]) in await queued_jobs(redis, settings)
    # The original keeps its own run.
    kept = (await client.get(f"/audits/{original['id']}")).json()
    assert kept["provenance"]["provider_request_id"] == "req-1"
    assert kept["provenance"]["model"] == "gpt-4o-mini-2024-07-18"
    assert kept["provenance"]["model_requested"] == original["model"]


async def test_a_rerun_of_a_rubric_audit_runs_the_same_rubric_version(
    client: AsyncClient,
) -> None:
    await client.post("/rubrics", json=rubric_request("house"))
    original = await submit(client, criteria=None, rubric="house")
    await client.post("/rubrics", json=rubric_request("house", criteria=[criterion("other")]))

    rerun = (await client.post(f"/audits/{original['id']}/rerun")).json()

    assert (rerun["rubric"], rerun["rubric_version"]) == ("house", 1)
    assert rerun["criteria"] == original["criteria"]


async def test_a_rerun_of_an_audit_of_a_batch_runs_alone(client: AsyncClient) -> None:
    batch = (await client.post("/batches", json=batch_request(1))).json()
    [original] = (await client.get(f"/audits?batch_id={batch['id']}")).json()["items"]

    rerun = (await client.post(f"/audits/{original['id']}/rerun")).json()

    assert (rerun["batch_id"], rerun["priority"]) == (None, "interactive")
    counts = (await client.get(f"/batches/{batch['id']}")).json()["counts"]
    assert counts["total"] == 1


async def test_a_rerun_of_no_audit_is_a_404(client: AsyncClient) -> None:
    assert_problem(await client.post(f"/audits/{uuid4()}/rerun"), 404, "audit_not_found")


async def test_an_idempotency_key_makes_a_rerun_safe_to_repeat(client: AsyncClient) -> None:
    first, second = await submit(client), await submit(client, subject="Another page")
    headers = {"Idempotency-Key": "rerun-1"}

    made = await client.post(f"/audits/{first['id']}/rerun", headers=headers)
    again = await client.post(f"/audits/{first['id']}/rerun", headers=headers)
    other = await client.post(f"/audits/{second['id']}/rerun", headers=headers)

    assert (made.status_code, again.status_code) == (202, 202)
    assert again.json()["id"] == made.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert_problem(other, 422, "idempotency_key_mismatch")
    assert len((await client.get("/audits")).json()["items"]) == 3


async def test_a_rerun_is_held_to_the_limits_as_they_stand(
    client: AsyncClient, client_with: ClientFactory
) -> None:
    original = await submit(client, samples=4)

    async with client_with(max_samples=3) as limited:
        response = await limited.post(f"/audits/{original['id']}/rerun")

    body = assert_problem(response, 422, "validation_error")
    assert "MAX_SAMPLES" in body["detail"]


# POST /batches/{id}/rerun


async def batch_audits(client: AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = (await client.get(f"/audits?batch_id={batch_id}")).json()["items"]
    return sorted(items, key=lambda a: a["subject"])


async def test_a_batch_rerun_is_a_new_batch_of_the_same_audits(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    body = batch_request(3)
    body["audits"][1]["samples"] = 5
    original = (await client.post("/batches", json=body)).json()
    before = await batch_audits(client, original["id"])
    await finish(engine, before[0]["id"])
    await client.post(f"/audits/{before[2]['id']}/cancel")

    response = await client.post(f"/batches/{original['id']}/rerun")

    assert response.status_code == 202, response.text
    batch = response.json()
    assert response.headers["Location"] == f"/api/v1/batches/{batch['id']}"
    assert (batch["rerun_of"], batch["name"], batch["metadata"]) == (
        original["id"],
        original["name"],
        original["metadata"],
    )
    assert batch["counts"]["queued"] == batch["counts"]["total"] == 3
    after = await batch_audits(client, batch["id"])
    assert [a["rerun_of"] for a in after] == [a["id"] for a in before]
    for copy, source in zip(after, before, strict=True):
        assert {k: copy[k] for k in (*INPUTS, "priority")} == {
            k: source[k] for k in (*INPUTS, "priority")
        }
    assert [a["samples"] for a in after] == [1, 5, 1]
    assert {audit_job_id(a["id"]) for a in after} <= await queued_jobs(redis, settings)


async def test_a_batch_rerun_with_an_idempotency_key_is_made_once(client: AsyncClient) -> None:
    original = (await client.post("/batches", json=batch_request(2))).json()
    headers = {"Idempotency-Key": "rerun-nightly"}

    made = await client.post(f"/batches/{original['id']}/rerun", headers=headers)
    again = await client.post(f"/batches/{original['id']}/rerun", headers=headers)

    assert again.json()["id"] == made.json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert len((await client.get("/batches")).json()["items"]) == 2


@pytest.mark.parametrize("limit", ["max_samples", "allowed_models"])
async def test_a_batch_rerun_beyond_the_limits_is_refused_whole(
    client: AsyncClient, client_with: ClientFactory, limit: str
) -> None:
    body = batch_request(2)
    body["audits"][1]["samples"] = 3
    original = (await client.post("/batches", json=body)).json()
    changed = {"max_samples": 2} if limit == "max_samples" else {"allowed_models": ["other"]}

    async with client_with(**changed) as limited:
        response = await limited.post(f"/batches/{original['id']}/rerun")

    problem = assert_problem(response, 422, "validation_error")
    field = "samples" if limit == "max_samples" else "model"
    assert ["audits", 1, field] in [issue["loc"] for issue in problem["errors"]]
    assert len((await client.get("/batches")).json()["items"]) == 1


async def test_a_batch_whose_audits_are_gone_has_nothing_to_rerun(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    original = (await client.post("/batches", json=batch_request(1))).json()
    async with engine.begin() as connection:
        await connection.execute(sa.text("DELETE FROM audit"))

    response = await client.post(f"/batches/{original['id']}/rerun")

    assert_problem(response, 409, "batch_has_no_audits")
