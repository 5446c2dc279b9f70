"""Budgets as clients meet them: `max_cost_usd` on a batch, and a tenant's monthly budget
that refuses submissions once spent (429 `budget_exhausted`), naming when it resets."""

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
import sqlalchemy as sa
from fastapi import FastAPI
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import TokenPrices
from shared.db import SessionFactory
from shared.spend.budgets import month_resets_at
from shared.tenants.caller import DEFAULT_TENANT
from tests.api.checks import assert_problem, row_counts, until_notified
from tests.api.conftest import ClientFactory
from tests.factories import audit_request, batch_request
from tests.rows import set_monthly_budget, spend_this_month

pytestmark = pytest.mark.usefixtures("clean")


# A batch's budget


async def test_a_batch_with_a_budget_shows_it_and_what_it_spent(client: AsyncClient) -> None:
    response = await client.post("/batches", json=batch_request(2, max_cost_usd=1.25))

    assert response.status_code == 202, response.text
    batch = response.json()
    assert batch["max_cost_usd"] == 1.25
    assert batch["budget_exhausted_at"] is None
    assert batch["usage"]["cost_usd"] == 0
    fetched = (await client.get(f"/batches/{batch['id']}")).json()
    assert fetched["max_cost_usd"] == 1.25


async def test_a_batch_without_a_budget_has_none(client: AsyncClient) -> None:
    batch = (await client.post("/batches", json=batch_request(1))).json()

    assert (batch["max_cost_usd"], batch["budget_exhausted_at"]) == (None, None)


async def test_a_batch_that_spent_its_budget_is_not_retried_but_can_be_rerun(
    client: AsyncClient, engine: AsyncEngine
) -> None:
    batch = (await client.post("/batches", json=batch_request(2, max_cost_usd=1))).json()
    async with engine.begin() as connection:  # spent, its audits cancelled, as a claim does
        await connection.execute(
            sa.text(
                "UPDATE batch SET spent_usd = 1.02, budget_exhausted_at = now() WHERE id = :id"
            ),
            {"id": batch["id"]},
        )
    await client.post(f"/batches/{batch['id']}/cancel")

    refused = await client.post(f"/batches/{batch['id']}/retry?include=cancelled")
    rerun = await client.post(f"/batches/{batch['id']}/rerun")

    problem = assert_problem(refused, 409, "batch_budget_spent")
    assert "max_cost_usd of 1" in problem["detail"]
    assert f"/batches/{batch['id']}/rerun" in problem["detail"]
    assert (await client.get(f"/batches/{batch['id']}")).json()["counts"]["cancelled"] == 2
    assert rerun.status_code == 202
    assert (rerun.json()["max_cost_usd"], rerun.json()["usage"]["cost_usd"]) == (1, 0)


@pytest.mark.parametrize("budget", [0, -1, "ten", 1e12, 1e-11, None])
async def test_a_budget_must_be_a_positive_amount(
    client: AsyncClient, budget: Any, engine: AsyncEngine
) -> None:
    body = batch_request(1) | {"max_cost_usd": budget}
    before = await row_counts(engine)

    response = await client.post("/batches", json=body)

    if budget is None:  # explicitly none: no budget
        assert response.status_code == 202
        return
    body = assert_problem(response, 422, "validation_error")
    assert body["errors"][0]["loc"][:2] == ["body", "max_cost_usd"]
    assert await row_counts(engine) == before


async def test_a_budget_needs_a_price_for_every_model_it_runs(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    models = ["gpt-4o-mini", "our-own-llama"]
    body = batch_request(3, max_cost_usd=5)
    body["audits"][1]["model"] = "our-own-llama"

    async with client_with(allowed_models=models) as client:
        refused = await client.post("/batches", json=body)
        unbudgeted = await client.post("/batches", json=body | {"max_cost_usd": None})

    problem = assert_problem(refused, 422, "model_price_unknown")
    assert "'our-own-llama'" in problem["detail"]
    assert "MODEL_PRICES" in problem["detail"]
    assert [e["loc"] for e in problem["errors"]] == [["body", "audits", 1, "model"]]
    assert unbudgeted.status_code == 202  # without a budget, a price is not needed

    priced = {"our-own-llama": TokenPrices(Decimal("0.2"), Decimal("0.4"))}
    async with client_with(allowed_models=models, model_prices=priced) as client:
        assert (await client.post("/batches", json=body)).status_code == 202


# A tenant's monthly budget


async def exhaust(app: FastAPI, factory: SessionFactory, budget: str, spent: str) -> None:
    """Give the tenant `default` a budget and a spend this month; wait for the API to know."""
    since = app.state.directory.generation
    await set_monthly_budget(factory, DEFAULT_TENANT, Decimal(budget))
    await spend_this_month(factory, DEFAULT_TENANT, Decimal(spent))
    await until_notified(app.state.directory, since=since)


@pytest.mark.parametrize(
    ("path", "body"), [("/audits", audit_request()), ("/batches", batch_request(2))]
)
async def test_a_tenant_past_its_monthly_budget_is_refused_with_when_it_resets(
    app: FastAPI,
    client: AsyncClient,
    session_factory: SessionFactory,
    engine: AsyncEngine,
    path: str,
    body: dict[str, Any],
) -> None:
    await exhaust(app, session_factory, budget="50", spent="50.0001")
    before = await row_counts(engine)

    refused = await client.post(path, json=body)

    problem = assert_problem(refused, 429, "budget_exhausted")
    resets_at = month_resets_at(datetime.now(UTC))
    assert "monthly budget of 50.00 USD" in problem["detail"]
    assert f"{resets_at:%Y-%m-%dT%H:%M:%SZ}" in problem["detail"]
    assert problem["limit"] == "monthly_budget_usd"
    assert (problem["monthly_budget_usd"], problem["spent_usd"]) == (50, 50.0001)
    assert datetime.fromisoformat(problem["resets_at"]) == resets_at
    seconds_left = (resets_at - datetime.now(UTC)).total_seconds()
    assert abs(int(refused.headers["Retry-After"]) - seconds_left) <= 2
    assert await row_counts(engine) == before


async def test_a_tenant_within_its_budget_submits_and_a_raised_budget_lets_it_again(
    app: FastAPI, client: AsyncClient, session_factory: SessionFactory
) -> None:
    await exhaust(app, session_factory, budget="50", spent="49.99")
    assert (await client.post("/audits", json=audit_request())).status_code == 202

    await exhaust(app, session_factory, budget="50", spent="0.01")
    assert (await client.post("/audits", json=audit_request())).status_code == 429

    since = app.state.directory.generation
    await set_monthly_budget(session_factory, DEFAULT_TENANT, Decimal(60))
    await until_notified(app.state.directory, since=since)
    assert (await client.post("/audits", json=audit_request())).status_code == 202


async def test_an_earlier_submission_is_replayed_past_the_budget(
    app: FastAPI, client: AsyncClient, session_factory: SessionFactory
) -> None:
    key = {"Idempotency-Key": "nightly-1"}
    first = await client.post("/audits", json=audit_request(), headers=key)
    await exhaust(app, session_factory, budget="1", spent="1")

    again = await client.post("/audits", json=audit_request(), headers=key)

    assert again.status_code == 202
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.json()["id"] == first.json()["id"]


def test_a_monthly_budget_resets_on_the_first_of_next_month_in_utc() -> None:
    assert month_resets_at(datetime(2026, 12, 31, 23, 59, tzinfo=UTC)) == datetime(
        2027, 1, 1, tzinfo=UTC
    )
    assert month_resets_at(datetime(2026, 2, 1, 0, 0, tzinfo=UTC)) == datetime(
        2026, 3, 1, tzinfo=UTC
    )


async def test_a_rerun_is_a_submission_refused_past_the_budget(
    app: FastAPI, client: AsyncClient, session_factory: SessionFactory
) -> None:
    audit = (await client.post("/audits", json=audit_request())).json()
    batch = (await client.post("/batches", json=batch_request(1))).json()
    await exhaust(app, session_factory, budget="1", spent="1")

    for path in (f"/audits/{audit['id']}/rerun", f"/batches/{batch['id']}/rerun"):
        assert_problem(await client.post(path), 429, "budget_exhausted")


async def test_a_rerun_batch_keeps_its_budget_with_nothing_spent(client: AsyncClient) -> None:
    batch = (await client.post("/batches", json=batch_request(2, max_cost_usd=3))).json()

    rerun = (await client.post(f"/batches/{batch['id']}/rerun")).json()

    assert (rerun["max_cost_usd"], rerun["usage"]["cost_usd"]) == (3, 0)
    assert rerun["rerun_of"] == batch["id"]
