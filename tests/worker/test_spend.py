"""What audits cost, end to end: submitted through the API, run by a real arq worker against
the simulator, whose usage (cached tokens included) is priced by `MODEL_PRICES`."""

import json
from decimal import Decimal
from typing import Any

import pytest
from fastapi import FastAPI
from httpx import AsyncClient

from shared.config import Settings, TokenPrices
from shared.db import SessionFactory
from shared.tenants.caller import DEFAULT_TENANT
from tests.factories import batch_request
from tests.fixtures.simulator import SimulatorHandle
from tests.rows import spent_this_month
from tests.worker.conftest import RunWorker, fetch, submit
from tests.worker.test_run_audit import prompt_tokens_of

# USD per million tokens: input, output, cached input.
PRICES = TokenPrices(Decimal("0.15"), Decimal("0.60"), Decimal("0.075"))
MILLION = Decimal(1_000_000)


@pytest.fixture
def priced(worker_settings: Settings) -> Settings:
    """The worker's settings, with the audits' model priced by MODEL_PRICES."""
    prices = {worker_settings.openai_model: PRICES}
    return worker_settings.model_copy(update={"model_prices": prices})


def expected_cost(usage: dict[str, Any], *, cached: int = 0) -> Decimal:
    uncached: int = usage["prompt_tokens"] - cached
    completion: int = usage["completion_tokens"]
    per_million = (
        uncached * PRICES.input
        + cached * (PRICES.cached_input or PRICES.input)
        + completion * PRICES.output
    )
    return per_million / MILLION


async def test_an_audits_cost_is_its_tokens_at_model_prices(
    client: AsyncClient, run_worker: RunWorker, priced: Settings, sim: SimulatorHandle
) -> None:
    submitted = await submit(client)

    await run_worker(priced)

    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded"
    usage = audit["usage"]
    assert usage["cost_usd"] == pytest.approx(float(expected_cost(usage)), abs=1e-12)
    assert usage["cost_usd"] > 0


async def test_cached_prompt_tokens_are_priced_at_the_cached_input_price(
    client: AsyncClient, run_worker: RunWorker, priced: Settings, sim: SimulatorHandle
) -> None:
    sim.report_cached(0.5)
    submitted = await submit(client)

    await run_worker(priced)

    usage = (await fetch(client, submitted["id"]))["usage"]
    cached = usage["prompt_tokens"] // 2  # what the simulator reported
    assert usage["cost_usd"] == pytest.approx(float(expected_cost(usage, cached=cached)), abs=1e-12)
    assert usage["cost_usd"] < float(expected_cost(usage))


async def test_every_billed_reply_of_every_attempt_is_counted(
    client: AsyncClient,
    run_worker: RunWorker,
    priced: Settings,
    sim: SimulatorHandle,
    session_factory: SessionFactory,
    retry_delays: list[Any],
) -> None:
    """An invalid reply, then a 500 on its corrective call (a transient error: the attempt
    is retried), then a valid reply: the invalid one was paid for and is counted."""
    submitted = await submit(client)
    sim.script(["malformed", "500", "ok"], subject=submitted["subject"])

    await run_worker(priced)

    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("succeeded", 2)
    malformed, _unanswered, answered = sim.requests()
    usage = audit["usage"]
    assert usage["prompt_tokens"] == prompt_tokens_of([malformed, answered])
    assert usage["cost_usd"] == pytest.approx(float(expected_cost(usage)), abs=1e-12)
    spent = await spent_this_month(session_factory, DEFAULT_TENANT)
    assert float(spent) == pytest.approx(usage["cost_usd"], abs=1e-12)


async def test_a_model_without_a_price_has_a_null_cost(
    app: FastAPI,
    client: AsyncClient,
    run_worker: RunWorker,
    worker_settings: Settings,
    sim: SimulatorHandle,
) -> None:
    unpriced = worker_settings.model_copy(update={"openai_model": "our-own-llama"})
    app.state.settings = app.state.settings.model_copy(update={"openai_model": "our-own-llama"})
    submitted = await submit(client)

    await run_worker(unpriced)

    usage = (await fetch(client, submitted["id"]))["usage"]
    assert usage["prompt_tokens"] > 0
    assert usage["cost_usd"] is None


async def test_a_batchs_usage_adds_up_its_audits(
    client: AsyncClient, run_worker: RunWorker, priced: Settings, sim: SimulatorHandle
) -> None:
    batch = (await client.post("/batches", json=batch_request(4))).json()

    await run_worker(priced)

    summary = (await client.get(f"/batches/{batch['id']}")).json()
    lines = (await client.get(f"/batches/{batch['id']}/results")).text.splitlines()
    usages = [json.loads(line)["usage"] for line in lines]
    assert summary["status"] == "completed"
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert summary["usage"][key] == sum(usage[key] for usage in usages)
    assert summary["usage"]["cost_usd"] == pytest.approx(
        sum(usage["cost_usd"] for usage in usages), abs=1e-12
    )
    assert summary["usage"]["cost_usd"] == pytest.approx(
        float(expected_cost(summary["usage"])), abs=1e-12
    )
