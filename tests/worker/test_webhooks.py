"""Webhooks from a worker process: its deliverer sends what its audits' ends wrote, to a
receiver that fails a third of the tries, and a receiver that hangs slows no audit."""

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, cast

import pytest
from arq.connections import ArqRedis
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr

from api.app import API_PREFIX, create_app
from cli.dev import free_port
from shared.audits.runs import Clock
from shared.config import Settings
from shared.webhooks.signing import new_secret
from tests.factories import audit_request, batch_request
from tests.fixtures.polling import eventually
from tests.fixtures.receiver import Receiver, always, receiving
from tests.worker.test_metrics import Samples, scrape, value
from worker.context import JobContext, shutdown, startup
from worker.tasks import run_audit

SECRET = new_secret()


@pytest.fixture
def hook_settings(worker_settings: Settings) -> Settings:
    return worker_settings.model_copy(
        update={"webhook_secret": SecretStr(SECRET), "webhook_allow_private": True}
    )


@asynccontextmanager
async def api_client(settings: Settings) -> AsyncIterator[AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url=f"http://test{API_PREFIX}") as c:
            yield c


@asynccontextmanager
async def worker_process(
    settings: Settings, redis: ArqRedis, job_clock: Clock
) -> AsyncIterator[JobContext]:
    """A worker's `ctx`, its deliverer running from startup to shutdown."""
    ctx: dict[str, Any] = {"settings": settings, "redis": redis, "job_try": 1, "clock": job_clock}
    await startup(ctx)
    try:
        yield cast(JobContext, ctx)
    finally:
        await shutdown(ctx)


def failing_a_third(seed: int) -> Any:
    draw = random.Random(seed)
    return lambda webhook_id, nth: 500 if draw.random() < 0.3 else 204


async def submit_all(client: AsyncClient, receiver: Receiver) -> tuple[list[str], list[str]]:
    """Four single audits and a batch of three with item events: (audit ids, batch ids)."""
    audits = [
        (await client.post("/audits", json=audit_request(callback_url=receiver.url()))).json()
        for _ in range(4)
    ]
    batch = (
        await client.post(
            "/batches",
            json=batch_request(3, callback_url=receiver.url("/batches"), item_events=True),
        )
    ).json()
    items = (await client.get(f"/audits?batch_id={batch['id']}")).json()["items"]
    return [a["id"] for a in [*audits, *items]], [batch["id"]]


async def test_every_end_reaches_a_receiver_failing_a_third_of_the_tries_signed(
    hook_settings: Settings, redis: ArqRedis, job_clock: Clock
) -> None:
    async with (
        receiving(failing_a_third(seed=7)) as receiver,
        api_client(hook_settings) as client,
        worker_process(hook_settings, redis, job_clock) as ctx,
    ):
        audit_ids, batch_ids = await submit_all(client, receiver)
        await asyncio.gather(*(run_audit(ctx, audit_id) for audit_id in audit_ids))
        delivered = await receiver.until_delivered(len(audit_ids) + len(batch_ids), within=40)
        deliveries = (await client.get(f"/audits/{audit_ids[0]}/deliveries")).json()

    payloads = [attempt.verified(SECRET) for attempt in delivered.values()]
    ends = {(p["type"], p["data"]["id"]) for p in payloads}
    assert ends == {
        *(("audit.succeeded", audit_id) for audit_id in audit_ids),
        ("batch.completed", batch_ids[0]),
    }
    assert any(attempt.status == 500 for attempt in receiver.tries), "no try failed: seed?"
    for attempt in receiver.tries:  # a failed try's id comes back until it is delivered
        assert attempt.webhook_id in delivered
    (event,) = deliveries["items"]
    assert event["status"] == "delivered"
    assert event["attempts"][-1]["status_code"] == 204


async def test_a_receiver_that_hangs_slows_no_audit(
    hook_settings: Settings, redis: ArqRedis, job_clock: Clock
) -> None:
    async with (
        receiving(delay_s=8.0) as receiver,
        api_client(hook_settings) as client,
        worker_process(hook_settings, redis, job_clock) as ctx,
    ):
        audit_ids, _ = await submit_all(client, receiver)
        await asyncio.gather(*(run_audit(ctx, a) for a in audit_ids[:2]))
        await asyncio.sleep(0.6)  # the deliverer claims their events, and waits on them
        begun = time.monotonic()
        await asyncio.gather(*(run_audit(ctx, a) for a in audit_ids[2:]))
        took = time.monotonic() - begun
        states = [(await client.get(f"/audits/{a}")).json()["status"] for a in audit_ids]

    assert receiver.most_at_once >= 1  # the receiver was holding tries meanwhile
    assert states == ["succeeded"] * len(audit_ids)
    assert took < 3.0, f"{len(audit_ids) - 2} audits took {took:.1f} s"


def settled(samples: Samples) -> tuple[float, float]:
    """The tries counted as delivered, and as gone."""
    tried = "auditq_webhook_tries_total"
    return value(samples, tried, status="delivered"), value(samples, tried, status="gone")


async def test_a_workers_tries_are_counted_by_where_they_left_their_event(
    hook_settings: Settings, redis: ArqRedis, job_clock: Clock
) -> None:
    metered = hook_settings.model_copy(update={"metrics_port": free_port()})
    async with (
        receiving() as taking,
        receiving(always(410)) as gone,
        api_client(metered) as client,
        worker_process(metered, redis, job_clock) as ctx,
    ):
        ids = [
            (await client.post("/audits", json=audit_request(callback_url=url))).json()["id"]
            for url in (taking.url(), gone.url())
        ]
        await asyncio.gather(*(run_audit(ctx, audit_id) for audit_id in ids))
        server = ctx["metrics_server"]
        assert server is not None

        async def tries() -> Samples:
            return await scrape(server.port)

        samples = await eventually(tries, lambda s: sum(settled(s)) == 2)

    assert settled(samples) == (1, 1)
    assert [t.status for t in gone.tries] == [410]
