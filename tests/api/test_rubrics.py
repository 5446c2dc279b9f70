"""The rubrics API, and the criteria snapshot an audit takes of the rubric it names."""

import asyncio
from typing import Any

import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.pagination import Cursors, listing
from tests.api.checks import assert_nothing_written, assert_problem, audit_row
from tests.factories import audit_request, criterion, rubric_request

READ_FIELDS = {"tenant", "name", "version", "description", "criteria", "created_at"}
V1_CRITERIA = [criterion() | {"weight": 1.0}, criterion("no_vague_terms", weight=2.0)]
V2_CRITERIA = [criterion("cites_certification", weight=3.0)]


async def publish(client: AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/rubrics", json=rubric_request(**overrides))
    assert response.status_code == 201, response.text
    rubric: dict[str, Any] = response.json()
    return rubric


async def submit_audit(client: AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/audits", json=audit_request(criteria=None, **overrides))
    assert response.status_code == 202, response.text
    audit: dict[str, Any] = response.json()
    return audit


# POST /rubrics


async def test_publish_answers_201_with_version_1(client: AsyncClient) -> None:
    response = await client.post("/rubrics", json=rubric_request())

    assert response.status_code == 201, response.text
    rubric = response.json()
    assert set(rubric) == READ_FIELDS
    assert (rubric["name"], rubric["version"]) == ("green_claims", 1)
    assert rubric["description"] == "Environmental claims on product pages."
    assert rubric["criteria"] == V1_CRITERIA
    assert response.headers["location"] == "/api/v1/rubrics/green_claims?version=1"


async def test_publishing_a_name_again_creates_the_next_version(client: AsyncClient) -> None:
    await publish(client)

    second = await publish(client, criteria=V2_CRITERIA, description="Stricter.")

    assert (second["version"], second["criteria"], second["description"]) == (
        2,
        V2_CRITERIA,
        "Stricter.",
    )
    first = (await client.get("/rubrics/green_claims", params={"version": 1})).json()
    assert first["criteria"] == V1_CRITERIA  # rubrics are immutable


async def test_a_new_name_starts_at_version_1(client: AsyncClient) -> None:
    await publish(client)
    await publish(client)

    assert (await publish(client, name="contract_clauses"))["version"] == 1


async def test_description_is_optional(client: AsyncClient) -> None:
    assert (await publish(client, description=None))["description"] == ""


async def test_concurrent_publishes_of_one_name_get_consecutive_versions(
    client: AsyncClient,
) -> None:
    bodies = [rubric_request(criteria=[criterion(f"criterion_{i}")]) for i in range(10)]

    responses = await asyncio.gather(*(client.post("/rubrics", json=body) for body in bodies))

    assert [response.status_code for response in responses] == [201] * 10
    published = [response.json() for response in responses]
    assert sorted(rubric["version"] for rubric in published) == list(range(1, 11))
    for rubric in published:
        stored = await client.get("/rubrics/green_claims", params={"version": rubric["version"]})
        assert stored.json()["criteria"] == rubric["criteria"]


@pytest.mark.parametrize(
    ("overrides", "loc"),
    [
        (
            {"criteria": [criterion("same"), criterion("same", weight=2)]},
            ["body", "criteria"],
        ),
        ({"criteria": []}, ["body", "criteria"]),
        ({"criteria": None}, ["body", "criteria"]),
        ({"criteria": [criterion("Bad Id")]}, ["body", "criteria", 0, "id"]),
        ({"criteria": [criterion(weight=0)]}, ["body", "criteria", 0, "weight"]),
        ({"criteria": [criterion(colour="green")]}, ["body", "criteria", 0, "colour"]),
        ({"name": "Green Claims"}, ["body", "name"]),
        ({"name": "-green"}, ["body", "name"]),
        ({"name": "g" * 65}, ["body", "name"]),
        ({"name": ""}, ["body", "name"]),
        ({"name": None}, ["body", "name"]),
        ({"description": "x" * 2001}, ["body", "description"]),
        ({"owner": "ops"}, ["body", "owner"]),
        ({"version": 7}, ["body", "version"]),
    ],
)
async def test_invalid_rubrics_are_refused(
    client: AsyncClient, engine: AsyncEngine, overrides: dict[str, Any], loc: list[Any]
) -> None:
    response = await client.post("/rubrics", json=rubric_request(**overrides))

    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [loc]
    assert (await client.get("/rubrics")).json()["items"] == []


# GET /rubrics/{name}


async def test_get_returns_the_latest_version_or_the_one_asked_for(client: AsyncClient) -> None:
    await publish(client)
    await publish(client, criteria=V2_CRITERIA)

    latest = await client.get("/rubrics/green_claims")
    first = await client.get("/rubrics/green_claims", params={"version": 1})

    assert latest.status_code == first.status_code == 200
    assert (latest.json()["version"], latest.json()["criteria"]) == (2, V2_CRITERIA)
    assert (first.json()["version"], first.json()["criteria"]) == (1, V1_CRITERIA)
    assert set(latest.json()) == READ_FIELDS


async def test_an_unknown_name_is_404(client: AsyncClient) -> None:
    problem = assert_problem(await client.get("/rubrics/no_such_rubric"), 404, "rubric_not_found")

    assert "no_such_rubric" in problem["detail"]


@pytest.mark.parametrize("version", [2, 2**31 - 1])
async def test_an_unknown_version_is_404(client: AsyncClient, version: int) -> None:
    await publish(client)

    response = await client.get("/rubrics/green_claims", params={"version": version})

    assert_problem(response, 404, "rubric_not_found")


@pytest.mark.parametrize("version", ["0", "-1", "two", str(2**31), str(2**63)])
async def test_a_version_that_cannot_exist_is_422(client: AsyncClient, version: str) -> None:
    await publish(client)

    response = await client.get("/rubrics/green_claims", params={"version": version})

    problem = assert_problem(response, 422, "validation_error")
    assert [error["loc"] for error in problem["errors"]] == [["query", "version"]]


async def test_a_name_that_is_not_a_slug_is_422(client: AsyncClient) -> None:
    response = await client.get("/rubrics/Not%20A%20Slug")

    assert_problem(response, 422, "validation_error")


# GET /rubrics


async def test_list_walks_the_latest_version_of_each_rubric_by_name(client: AsyncClient) -> None:
    for name in ("echo", "alpha", "delta", "charlie", "bravo"):
        await publish(client, name=name)
    await publish(client, name="charlie", criteria=V2_CRITERIA)
    await publish(client, name="alpha", criteria=V2_CRITERIA)
    await publish(client, name="alpha", criteria=V1_CRITERIA)

    seen: list[tuple[str, int]] = []
    page_sizes: list[int] = []
    cursor: str | None = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        response = await client.get("/rubrics", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        page_sizes.append(len(page["items"]))
        seen += [(rubric["name"], rubric["version"]) for rubric in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break

    assert seen == [("alpha", 3), ("bravo", 1), ("charlie", 2), ("delta", 1), ("echo", 1)]
    assert page_sizes == [2, 2, 1]


async def test_list_is_empty_without_rubrics(client: AsyncClient) -> None:
    response = await client.get("/rubrics")

    assert response.json() == {"items": [], "next_cursor": None}


async def test_list_refuses_a_cursor_it_did_not_issue(client: AsyncClient) -> None:
    assert_problem(await client.get("/rubrics?cursor=YWxwaGE"), 422, "invalid_cursor")


# An audit's snapshot of its rubric


async def test_an_audit_naming_a_rubric_references_its_latest_version(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    await publish(client)

    audit = await submit_audit(client, rubric="green_claims")

    assert (audit["rubric"], audit["rubric_version"]) == ("green_claims", 1)
    assert audit["criteria"] == V1_CRITERIA
    # Versions never change: the row references one instead of copying its criteria.
    row = await audit_row(engine, audit["id"])
    assert (row["rubric_name"], row["rubric_version"], row["criteria"]) == ("green_claims", 1, None)


async def test_publishing_a_new_version_does_not_change_earlier_audits(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    await publish(client)
    audit = await submit_audit(client, rubric="green_claims")

    await publish(client, criteria=V2_CRITERIA)

    read = (await client.get(f"/audits/{audit['id']}")).json()
    assert (read["rubric_version"], read["criteria"]) == (1, V1_CRITERIA)
    later = await submit_audit(client, rubric="green_claims")
    assert (later["rubric_version"], later["criteria"]) == (2, V2_CRITERIA)


async def test_an_audit_can_pin_an_earlier_version(client: AsyncClient) -> None:
    await publish(client)
    await publish(client, criteria=V2_CRITERIA)

    audit = await submit_audit(client, rubric="green_claims", rubric_version=1)

    assert (audit["rubric"], audit["rubric_version"], audit["criteria"]) == (
        "green_claims",
        1,
        V1_CRITERIA,
    )
    listed = (await client.get("/audits", params={"rubric": "green_claims"})).json()["items"]
    assert [a["id"] for a in listed] == [audit["id"]]


@pytest.mark.parametrize(
    "reference",
    [
        {"rubric": "no_such_rubric"},
        {"rubric": "green_claims", "rubric_version": 2},
        {"rubric": "Green_Claims"},
    ],
)
async def test_an_audit_naming_an_unknown_rubric_is_refused_and_nothing_written(
    client: AsyncClient,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
    reference: dict[str, Any],
) -> None:
    await publish(client)

    response = await client.post("/audits", json=audit_request(criteria=None, **reference))

    problem = assert_problem(response, 422, "rubric_not_found")
    assert reference["rubric"] in problem["detail"]
    await assert_nothing_written(engine, redis, settings, rubrics=1)


async def test_an_audit_gives_criteria_or_a_rubric_not_both(
    client: AsyncClient, engine: AsyncEngine, redis: ArqRedis, settings: Settings
) -> None:
    await publish(client)

    both = await client.post("/audits", json=audit_request(rubric="green_claims"))
    version_alone = await client.post("/audits", json=audit_request(rubric_version=1))

    assert_problem(both, 422, "validation_error")
    assert_problem(version_alone, 422, "validation_error")
    await assert_nothing_written(engine, redis, settings, rubrics=1)


async def test_a_signed_cursor_naming_no_slug_is_refused(app: FastAPI, client: AsyncClient) -> None:
    cursor = Cursors(app.state.cursor_key, listing("rubrics")).name("a\x00b")
    response = await client.get("/rubrics", params={"cursor": cursor})

    assert_problem(response, 422, "invalid_cursor")
