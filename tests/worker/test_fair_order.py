"""The fair queue end to end: audits submitted through the API, run by the Procfile's worker.

One slot (`WORKER_CONCURRENCY=1`), so the order audits start in is the scheduler's.
"""

from typing import Any

from httpx import AsyncClient

from shared.config import Settings
from tests.factories import batch_request
from tests.worker.conftest import RunWorker, fetch, submit


async def batch_audits(client: AsyncClient, size: int) -> list[dict[str, Any]]:
    response = await client.post("/batches", json=batch_request(size))
    assert response.status_code == 202, response.text
    listed = await client.get("/audits", params={"batch_id": response.json()["id"], "limit": 50})
    items: list[dict[str, Any]] = listed.json()["items"]
    return items


async def started_at(client: AsyncClient, audits: list[dict[str, Any]]) -> list[str]:
    return [(await fetch(client, audit["id"]))["started_at"] for audit in audits]


async def test_an_interactive_audit_overtakes_a_bulk_backlog(
    client: AsyncClient, run_worker: RunWorker, worker_settings: Settings
) -> None:
    backlog = await batch_audits(client, 12)
    single = await submit(client)

    await run_worker(worker_settings.model_copy(update={"worker_concurrency": 1}))

    first = (await fetch(client, single["id"]))["started_at"]
    assert first < min(await started_at(client, backlog))


async def test_a_second_batch_ends_long_before_the_first(
    client: AsyncClient, run_worker: RunWorker, worker_settings: Settings
) -> None:
    first = await batch_audits(client, 12)
    second = await batch_audits(client, 3)

    await run_worker(worker_settings.model_copy(update={"worker_concurrency": 1}))

    first_started = sorted(await started_at(client, first))
    # Turn about: the second batch's three start among the first batch's first four.
    assert max(await started_at(client, second)) < first_started[3]
