"""Model rate limits across workers (shared/llm/ratelimit.py), through real arq workers.

Audits are submitted through the API and run by several `arq.Worker`s that share the
test's queue and Redis, as the worker processes of one deployment do. The simulator
records when each model request arrived: that is what the provider would count.
A deferral's delay is checked against a `FrozenClock`, or within the real time the test
measured, never on a guess of how long a step takes.
"""

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, cast
from uuid import UUID

import pytest
import sqlalchemy as sa
from arq import Retry
from arq.connections import ArqRedis
from httpx import AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits import repository
from shared.config import Settings
from shared.db import SessionFactory, statement_connection
from shared.llm.ratelimit import (
    ARRIVAL_MARGIN_S,
    WINDOW_S,
    create_rate_limiter,
    estimate_tokens,
)
from tests.factories import batch_request
from tests.fixtures.clock import FrozenClock
from tests.fixtures.simulator import RETRY_AFTER_S, SimulatorHandle
from tests.rows import load_audit
from tests.worker.conftest import build_worker, close_worker, fetch, submit
from worker.backoff import RATE_LIMIT_JITTER_S
from worker.context import JobContext, shutdown, startup
from worker.tasks import run_audit

WORKERS = 4
# Deferred jobs wait in the queue for a window to pass: poll as deployed workers do.
POLL_DELAY_S = 0.1
# arq keeps a deferral in whole milliseconds, as Redis does a TTL.
MS_ROUNDING_S = 0.001

StartWorkerCtx = Callable[[Settings], Awaitable[JobContext]]


def most_in_any_window(times: list[float], window_s: float) -> int:
    """The largest number of `times` that fall within one window of `window_s` seconds."""
    times = sorted(times)
    most, first = 0, 0
    for last, moment in enumerate(times):
        while moment - times[first] >= window_s:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_most_in_any_window_counts_a_sliding_window() -> None:
    assert most_in_any_window([], 60) == 0
    assert most_in_any_window([0, 59.9, 60, 119.9, 120], 60) == 2
    assert most_in_any_window([5, 0, 30, 61, 62, 89], 60) == 4


async def run_workers(settings: Settings, *, count: int, window_s: int, deadline_s: float) -> None:
    """Run `count` burst workers on one queue until it is empty; their windows last `window_s`."""

    async def startup_with_window(ctx: dict[str, Any]) -> None:
        await startup(ctx)
        ctx["rate_limiter"] = create_rate_limiter(ctx["settings"], ctx["redis"], window_s=window_s)

    workers = [
        build_worker(settings, on_startup=startup_with_window, poll_delay=POLL_DELAY_S)
        for _ in range(count)
    ]
    try:
        await asyncio.wait_for(asyncio.gather(*(w.main() for w in workers)), deadline_s)
    finally:
        for worker in workers:
            await close_worker(worker)


async def submit_batch(client: AsyncClient, size: int) -> tuple[str, str]:
    """Submit `size` audits as one batch; its id and the model its audits run with."""
    response = await client.post("/batches", json=batch_request(size=size))
    assert response.status_code == 202, response.text
    batch_id: str = response.json()["id"]
    listed = await client.get("/audits", params={"batch_id": batch_id, "limit": 1})
    model: str = listed.json()["items"][0]["model"]
    return batch_id, model


async def attempts_of(engine: AsyncEngine) -> dict[int, int]:
    """How many audits took how many attempts."""
    async with engine.connect() as connection:
        rows = await connection.execute(
            sa.text("SELECT attempts, count(*) AS audits FROM audit GROUP BY attempts")
        )
    return {row.attempts: row.audits for row in rows}


async def keep_to_the_limit(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_settings: Settings,
    engine: AsyncEngine,
    *,
    limit: int,
    window_s: int,
    audits: int,
    deadline_s: float,
) -> int:
    """Run `audits` through `WORKERS` workers limited to `limit` requests a window.

    Every audit must succeed at its first attempt, with no 429; returns the most
    requests the simulator received within one window.
    """
    batch_id, model = await submit_batch(client, audits)
    settings = worker_settings.model_copy(update={"model_rpm_limits": {model: limit}})

    await run_workers(settings, count=WORKERS, window_s=window_s, deadline_s=deadline_s)

    batch = (await client.get(f"/batches/{batch_id}")).json()
    assert batch["counts"]["succeeded"] == audits, batch["counts"]
    assert await attempts_of(engine) == {1: audits}  # a deferred job spent no attempt
    assert sim.stats() == {"requests": audits, "outcomes": {"ok": audits}}
    return most_in_any_window(sim.received_at(), window_s)


async def test_workers_together_keep_to_the_request_limit(
    client: AsyncClient, sim: SimulatorHandle, worker_settings: Settings, engine: AsyncEngine
) -> None:
    """The fast variant: a one-second window, so that it passes a few times."""
    limit, window_s = 3, 1

    most = await keep_to_the_limit(
        client,
        sim,
        worker_settings,
        engine,
        limit=limit,
        window_s=window_s,
        audits=9,
        deadline_s=60,
    )

    assert most <= limit


@pytest.mark.slow
async def test_workers_together_keep_to_60_requests_per_minute(
    client: AsyncClient, sim: SimulatorHandle, worker_settings: Settings, engine: AsyncEngine
) -> None:
    """The promise as ops set it: 4 workers, MODEL_RPM_LIMITS=…=60, 120 audits."""
    most = await keep_to_the_limit(
        client,
        sim,
        worker_settings,
        engine,
        limit=60,
        window_s=WINDOW_S,
        audits=120,
        deadline_s=300,
    )

    times = sorted(sim.received_at())
    soonest = min(later - earlier for earlier, later in zip(times, times[60:], strict=False))
    print(
        f"\nmost requests received in any {WINDOW_S} s: {most}; "
        f"request n+60 came {soonest:.2f} s after request n at the soonest"
    )
    assert most <= 60


# One job at a time, with the ctx each worker process builds


@pytest.fixture
async def start_worker_ctx(redis: ArqRedis) -> AsyncIterator[StartWorkerCtx]:
    """Build the `ctx` of another worker process with these settings (same Redis)."""
    started: list[dict[str, Any]] = []

    async def start(settings: Settings) -> JobContext:
        ctx: dict[str, Any] = {"settings": settings, "redis": redis, "job_try": 1}
        await startup(ctx)
        started.append(ctx)
        return cast(JobContext, ctx)

    yield start
    for ctx in started:
        await shutdown(ctx)


async def test_a_job_over_the_limit_is_deferred_before_it_claims_its_audit(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_settings: Settings,
    start_worker_ctx: StartWorkerCtx,
    session_factory: SessionFactory,
) -> None:
    first, second = await submit(client), await submit(client)
    limited = worker_settings.model_copy(update={"model_rpm_limits": {first["model"]: 1}})
    ctx = await start_worker_ctx(limited)
    clock = FrozenClock()
    ctx["rate_limiter"] = create_rate_limiter(limited, ctx["redis"], clock=clock)
    await run_audit(ctx, first["id"])

    with pytest.raises(Retry) as deferred:
        await run_audit(ctx, second["id"])

    # Back once the first request has left the window, not before; no attempt spent. It
    # was let in at most `real_elapsed` after the clock's time.
    assert deferred.value.defer_score is not None
    defer_s = deferred.value.defer_score / 1000
    span_s = WINDOW_S + ARRIVAL_MARGIN_S
    latest_s = span_s + clock.real_elapsed() + RATE_LIMIT_JITTER_S
    assert span_s - MS_ROUNDING_S <= defer_s <= latest_s + MS_ROUNDING_S
    audit = await load_audit(session_factory, second["id"])
    assert (audit.status, audit.attempts, audit.started_at) == ("queued", 0, None)
    assert (await fetch(client, first["id"]))["status"] == "succeeded"
    assert sim.stats()["requests"] == 1


async def test_a_provider_429_pauses_the_model_for_every_worker(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_settings: Settings,
    start_worker_ctx: StartWorkerCtx,
    session_factory: SessionFactory,
) -> None:
    one_worker = await start_worker_ctx(worker_settings)
    another_worker = await start_worker_ctx(worker_settings)
    first, second = await submit(client), await submit(client)
    sim.script(["429"])
    clock = FrozenClock()

    with pytest.raises(Retry):  # the audit's own transient retry
        await run_audit(one_worker, first["id"])
    with pytest.raises(Retry) as deferred:
        await run_audit(another_worker, second["id"])

    # No limits are set: the pause alone sent it back, for what is left of the provider's
    # Retry-After (set at most `real_elapsed` ago).
    assert deferred.value.defer_score is not None
    defer_s = deferred.value.defer_score / 1000
    soonest_s = RETRY_AFTER_S - clock.real_elapsed()
    assert soonest_s - MS_ROUNDING_S <= defer_s <= RETRY_AFTER_S + RATE_LIMIT_JITTER_S
    audit = await load_audit(session_factory, second["id"])
    assert (audit.status, audit.attempts) == ("queued", 0)
    assert sim.stats() == {"requests": 1, "outcomes": {"429": 1}}


async def test_the_request_for_a_corrected_reply_counts_against_the_limit(
    client: AsyncClient,
    sim: SimulatorHandle,
    worker_settings: Settings,
    start_worker_ctx: StartWorkerCtx,
) -> None:
    first, second = await submit(client), await submit(client)
    limited = worker_settings.model_copy(update={"model_rpm_limits": {first["model"]: 2}})
    ctx = await start_worker_ctx(limited)
    sim.script(["malformed", "ok"])
    await run_audit(ctx, first["id"])
    assert (await fetch(client, first["id"]))["status"] == "succeeded"

    # One request was reserved, two were made: the window is full.
    with pytest.raises(Retry):
        await run_audit(ctx, second["id"])
    assert sim.stats()["requests"] == 2


async def test_the_token_estimate_covers_what_the_model_reports(
    client: AsyncClient, worker_ctx: JobContext, engine: AsyncEngine
) -> None:
    submitted = await submit(client)
    async with statement_connection(engine) as conn:
        call = await repository.next_call(conn, audit_id=UUID(submitted["id"]))
    assert call is not None
    estimate = estimate_tokens(prompt_chars=call.text_chars, criteria=call.criteria)

    await run_audit(worker_ctx, submitted["id"])

    usage = (await fetch(client, submitted["id"]))["usage"]
    # Erring high keeps the provider's limit; not so high that the limit goes unused.
    assert usage["total_tokens"] <= estimate <= 2 * usage["total_tokens"]
