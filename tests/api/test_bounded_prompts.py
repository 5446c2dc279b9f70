"""Bounded prompts: criteria text capped, prompts larger than the model's context refused.

A rubric is referenced by its audits, not copied into each, so a batch that names a
large rubric costs its rows nothing; the criteria's text is capped
(`MAX_CRITERIA_CHARS`), and an audit whose estimated prompt exceeds the model's
context (`MODEL_CONTEXT_TOKENS`) is refused with `prompt_too_large` before
anything is written.
"""

from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.api.checks import assert_problem, row_counts
from tests.api.conftest import ClientFactory
from tests.factories import audit_request, batch_request, criterion, rubric_request

pytestmark = pytest.mark.usefixtures("clean")


def criteria_of(total_chars: int, count: int = 5) -> list[dict[str, Any]]:
    """`count` criteria whose descriptions add up to `total_chars`."""
    size = total_chars // count
    return [criterion(f"c{i}", description="x" * size) for i in range(count)]


async def test_inline_criteria_over_the_limit_are_refused(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    async with client_with(max_criteria_chars=1000) as client:
        at_limit = await client.post("/audits", json=audit_request(criteria=criteria_of(1000)))
        over = await client.post("/audits", json=audit_request(criteria=criteria_of(1005)))

    assert at_limit.status_code == 202, at_limit.text
    body = assert_problem(over, 422, "validation_error")
    assert body["errors"][0]["loc"] == ["body", "criteria"]
    assert "MAX_CRITERIA_CHARS" in body["detail"]
    assert (await row_counts(engine))["audit"] == 1


async def test_a_rubric_over_the_limit_is_refused(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    async with client_with(max_criteria_chars=1000) as client:
        response = await client.post(
            "/rubrics", json=rubric_request(criteria=criteria_of(2000, count=50))
        )

    body = assert_problem(response, 422, "validation_error")
    assert "at most 1000 characters together" in body["detail"]
    assert (await row_counts(engine))["rubric"] == 0


async def test_an_audit_whose_prompt_exceeds_the_context_is_refused(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    async with client_with(model_context_tokens={"gpt-4o-mini": 2000}) as client:
        fits = await client.post("/audits", json=audit_request(content="word " * 200))
        response = await client.post("/audits", json=audit_request(content="word " * 2000))

    assert fits.status_code == 202, fits.text
    body = assert_problem(response, 422, "prompt_too_large")
    assert body["errors"][0]["loc"] == ["body", "content"]
    assert "2000 of gpt-4o-mini (MODEL_CONTEXT_TOKENS)" in body["detail"]
    assert (await row_counts(engine))["audit"] == 1


async def test_a_batch_with_one_prompt_too_large_is_refused_whole(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    batch = batch_request(5)
    batch["audits"][3]["content"] = "word " * 2000

    async with client_with(model_context_tokens={"gpt-4o-mini": 2000}) as client:
        response = await client.post("/batches", json=batch)

    body = assert_problem(response, 422, "prompt_too_large")
    assert [error["loc"] for error in body["errors"]] == [["body", "audits", 3, "content"]]
    assert await row_counts(engine) == {"audit": 0, "batch": 0, "rubric": 0}


async def test_a_rubric_counts_toward_the_prompt_of_the_audits_naming_it(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    settings = {"model_context_tokens": {"gpt-4o-mini": 3000}, "max_criteria_chars": 20_000}
    async with client_with(**settings) as client:
        rubric = rubric_request(criteria=criteria_of(12_000, count=10))
        published = await client.post("/rubrics", json=rubric)
        assert published.status_code == 201, published.text
        body = audit_request(criteria=None, rubric="green_claims")
        response = await client.post("/audits", json=body)

    assert_problem(response, 422, "prompt_too_large")
    assert (await row_counts(engine))["audit"] == 0


async def test_a_batch_naming_a_rubric_stores_no_copy_of_it(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    criteria = criteria_of(9_000, count=45)
    assert (
        await client.post("/rubrics", json=rubric_request(criteria=criteria))
    ).status_code == 201
    items = [
        audit_request(subject=f"Page {i}", criteria=None, rubric="green_claims") for i in range(200)
    ]

    response = await client.post("/batches", json=batch_request(audits=items))

    assert response.status_code == 202, response.text
    listed = (await client.get("/audits?limit=1")).json()["items"][0]
    assert [c["id"] for c in listed["criteria"]] == [c["id"] for c in criteria]
    async with engine.connect() as connection:
        stored = await connection.exec_driver_sql(
            "SELECT count(*) AS n, sum(pg_column_size(audit.*)) AS size FROM audit "
            "WHERE criteria IS NULL"
        )
        row = stored.mappings().one()
    assert row["n"] == 200
    assert row["size"] / row["n"] < 1000  # the rubric's 9,000 characters are not in each row
