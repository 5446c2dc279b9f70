"""RETENTION_DAYS: old finished audits go, everything else stays."""

from typing import Any

import pytest
import sqlalchemy as sa
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.factories import audit_request, batch_request
from worker import retention
from worker.context import JobContext


async def _age(engine: AsyncEngine, audit_id: str, *, status: str, days: int) -> None:
    async with engine.begin() as connection:
        await connection.execute(
            sa.text(
                "UPDATE audit SET status = :status, "
                "finished_at = CASE WHEN :status IN ('queued', 'running') THEN NULL "
                "ELSE now() - make_interval(days => :days) END, "
                "created_at = now() - make_interval(days => :days + 1) WHERE id = :id"
            ),
            {"status": status, "days": days, "id": audit_id},
        )


async def _ids(engine: AsyncEngine, table: str) -> set[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(sa.text(f"SELECT id::text FROM {table}"))
        return {row[0] for row in rows}


async def _submit(client: AsyncClient, **overrides: Any) -> str:
    response = await client.post("/audits", json=audit_request(**overrides))
    return str(response.json()["id"])


async def test_off_by_default_nothing_is_deleted(
    client: AsyncClient, engine: AsyncEngine, worker_ctx: JobContext
) -> None:
    audit_id = await _submit(client)
    await _age(engine, audit_id, status="succeeded", days=400)
    assert await retention.purge_expired(worker_ctx) == 0
    assert await _ids(engine, "audit") == {audit_id}


async def test_only_finished_audits_older_than_the_limit_go(
    client: AsyncClient,
    engine: AsyncEngine,
    worker_ctx: JobContext,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    worker_ctx["settings"] = worker_ctx["settings"].model_copy(update={"retention_days": 30})
    monkeypatch.setattr(retention, "CHUNK", 2)  # several chunks, to cross a chunk boundary
    old = [await _submit(client) for _ in range(5)]
    for audit_id, status in zip(
        old, ["succeeded", "failed", "cancelled", "succeeded", "failed"], strict=True
    ):
        await _age(engine, audit_id, status=status, days=31)
    recent = await _submit(client)
    await _age(engine, recent, status="succeeded", days=29)
    old_but_running = await _submit(client)
    await _age(engine, old_but_running, status="running", days=90)

    assert await retention.purge_expired(worker_ctx) == 5
    assert await _ids(engine, "audit") == {recent, old_but_running}


async def test_a_batch_goes_once_its_audits_are_gone(
    client: AsyncClient, engine: AsyncEngine, worker_ctx: JobContext
) -> None:
    worker_ctx["settings"] = worker_ctx["settings"].model_copy(update={"retention_days": 30})
    batch = (await client.post("/batches", json=batch_request(size=2))).json()
    listed = (await client.get("/audits", params={"batch_id": batch["id"]})).json()["items"]
    for item in listed:
        await _age(engine, item["id"], status="succeeded", days=31)
    async with engine.begin() as connection:
        await connection.execute(
            sa.text("UPDATE batch SET created_at = now() - interval '40 days' WHERE id = :id"),
            {"id": batch["id"]},
        )

    assert await retention.purge_expired(worker_ctx) == 2
    assert await _ids(engine, "batch") == set()
