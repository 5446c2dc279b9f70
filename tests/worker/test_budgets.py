"""Budgets end to end: a real arq worker against the simulator stops spending at a batch's
`max_cost_usd` under 20 concurrent slots, and holds a tenant's audits past its monthly
budget until the budget is raised."""

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from httpx import AsyncClient

from shared.config import Settings, TokenPrices
from shared.db import SessionFactory
from shared.fair_queue import held_tenants
from shared.tenants.caller import DEFAULT_TENANT
from tests.api.checks import until_notified
from tests.factories import audit_request, batch_request
from tests.fixtures.simulator import SimulatorHandle
from tests.rows import set_monthly_budget, spent_this_month
from tests.worker.conftest import RunWorker, fetch, submit
from worker.context import JobContext
from worker.reconciler import reconcile

SLOTS = 20
BATCH_SIZE = 200
PRICES = TokenPrices(Decimal("0.15"), Decimal("0.60"))


@pytest.fixture
def priced(worker_settings: Settings) -> Settings:
    """The worker's settings: the audits' model priced by MODEL_PRICES."""
    prices = {worker_settings.openai_model: PRICES}
    return worker_settings.model_copy(update={"model_prices": prices})


async def results(client: AsyncClient, batch_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/batches/{batch_id}/results")
    return [json.loads(line) for line in response.text.splitlines()]


async def test_a_batch_stops_spending_at_its_budget_under_20_slots(
    client: AsyncClient, run_worker: RunWorker, priced: Settings, sim: SimulatorHandle
) -> None:
    # One audit first, to know what one costs (they are alike), then a batch whose budget
    # buys about 50 of its 200: every slot is busy when the budget is reached.
    probe = await submit(client)
    await run_worker(priced)
    one = Decimal(str((await fetch(client, probe["id"]))["usage"]["cost_usd"]))
    sim.reset()
    sim.answer_after(40, 60)
    budget = 50 * one
    body = batch_request(BATCH_SIZE, max_cost_usd=str(budget))
    batch = (await client.post("/batches", json=body)).json()

    await run_worker(priced.model_copy(update={"worker_concurrency": SLOTS}))

    stopped = (await client.get(f"/batches/{batch['id']}")).json()
    audits = await results(client, batch["id"])
    ran = [a for a in audits if a["status"] == "succeeded"]
    cancelled = [a for a in audits if a["status"] == "cancelled"]
    spent = Decimal(str(stopped["usage"]["cost_usd"]))
    priciest = max(Decimal(str(a["usage"]["cost_usd"])) for a in ran)
    # It reached its budget, and went past it by no more than what was in flight: at most
    # one audit per slot, each no dearer than the dearest that ran.
    assert spent >= budget
    assert spent - budget <= SLOTS * priciest
    assert len(ran) + len(cancelled) == BATCH_SIZE
    assert 50 <= len(ran) < 50 + SLOTS + 2
    # The rest never called the model.
    assert {(a["error"]["code"], a["usage"]) for a in cancelled} == {("budget_exhausted", None)}
    assert sim.stats()["requests"] == len(ran)
    assert stopped["status"] == "cancelled"
    assert stopped["budget_exhausted_at"] is not None
    assert stopped["max_cost_usd"] == float(budget)
    assert stopped["counts"]["succeeded"] == len(ran)


async def test_a_tenants_audits_wait_past_its_budget_and_run_once_it_is_raised(
    app: FastAPI,
    client: AsyncClient,
    run_worker: RunWorker,
    priced: Settings,
    sim: SimulatorHandle,
    session_factory: SessionFactory,
    worker_ctx: JobContext,
    redis: ArqRedis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    one_slot = priced.model_copy(update={"worker_concurrency": 1})
    probe = await submit(client)
    await run_worker(one_slot)
    one = Decimal(str((await fetch(client, probe["id"]))["usage"]["cost_usd"]))
    # Two more audits and the tenant has spent its budget; four wait.
    await set_monthly_budget(session_factory, DEFAULT_TENANT, one * 5 / 2)
    waiting = [await submit(client, subject=f"Page {index}") for index in range(6)]

    await run_worker(one_slot)

    statuses = [(await fetch(client, a["id"]))["status"] for a in waiting]
    assert statuses == ["succeeded"] * 2 + ["queued"] * 4
    assert await spent_this_month(session_factory, DEFAULT_TENANT) >= one * 5 / 2
    assert sim.stats()["requests"] == 3
    assert await held_tenants(redis, priced.queue_name) == {DEFAULT_TENANT}
    refused = await client.post("/audits", json=audit_request())
    assert refused.status_code == 429
    assert refused.json()["code"] == "budget_exhausted"

    since = app.state.directory.generation
    await set_monthly_budget(session_factory, DEFAULT_TENANT, 100 * one)
    await until_notified(app.state.directory, since=since)
    # The audit turned away lost its job: the reconciler enqueues it again, into the flow.
    monkeypatch.setattr("worker.reconciler.ORPHAN_AGE", timedelta(0))
    reconciled = await reconcile(worker_ctx)
    await run_worker(one_slot)

    assert reconciled["tenants_released"] == 1
    statuses = [(await fetch(client, a["id"]))["status"] for a in waiting]
    assert statuses == ["succeeded"] * 6
    assert await held_tenants(redis, priced.queue_name) == set()
    assert (await client.post("/audits", json=audit_request())).status_code == 202
