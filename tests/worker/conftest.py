"""Fixtures of the worker tests: settings pointing at the simulator, real arq workers, a real ctx.

Jobs run through the Procfile's worker (`RedisTolerantWorker`, an `arq.Worker` that picks
from the fair queue) built from `worker_options`, in burst mode, or by calling
`run_audit` directly with the `ctx` that `worker.context.startup` builds.
"""

import asyncio
import warnings
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, cast

import pytest
import structlog
from arq import Worker
from arq.connections import ArqRedis
from fastapi import FastAPI
from httpx import AsyncClient
from structlog.typing import EventDict

from shared.audits.runs import Clock
from shared.config import Settings
from tests.factories import audit_request
from tests.fixtures.polling import eventually
from tests.fixtures.simulator import SimulatorHandle
from worker.backoff import retry_delay
from worker.context import JobContext, shutdown, startup
from worker.runner import RedisTolerantWorker
from worker.settings import worker_options

# Generous for a simulator that answers in milliseconds; a hang test sets a short one.
MODEL_TIMEOUT_S = 5.0
WORKER_DEADLINE_S = 30.0
IN_FLIGHT_GRACE_S = 5.0  # how long a stopped test worker's running jobs get to end

RunWorker = Callable[..., Coroutine[Any, Any, Worker]]


@pytest.fixture
def worker_settings(settings: Settings, sim: SimulatorHandle) -> Settings:
    """The test's settings (its own queue), with the model served by the simulator."""
    return settings.model_copy(
        update={"openai_base_url": sim.base_url, "openai_timeout_s": MODEL_TIMEOUT_S}
    )


def build_worker(
    settings: Settings,
    worker_class: type[Worker] = RedisTolerantWorker,
    *,
    clock: Clock | None = None,
    **overrides: Any,
) -> Worker:
    """A burst worker; its jobs keep time by `clock` when one is given."""
    options = worker_options(settings)
    if clock is not None:
        options["ctx"] = {**options["ctx"], "clock": clock}
    options = {
        **options,
        "burst": True,
        "poll_delay": 0,
        "handle_signals": False,
        **overrides,
    }
    return worker_class(**options)


async def close_worker(worker: Worker) -> None:
    # arq's close cancels the jobs still running and then gathers them, raising their
    # CancelledError: a job whose audit is already written may still be doing arq's
    # bookkeeping when a test stops its worker, so it is given a moment to end first.
    in_flight = [task for task in worker.tasks.values() if not task.done()]
    if in_flight:
        _, pending = await asyncio.wait(in_flight, timeout=IN_FLIGHT_GRACE_S)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    # arq 0.28 closes its pool with redis-py's deprecated `close()`.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Call to deprecated close", DeprecationWarning)
        await worker.close()


class RecordedBackoff:
    """The backoff of the test's jobs: the real one, or none once `at_once` is set.

    Keeps the (attempt, retry_after) each retry asked for.
    """

    def __init__(self) -> None:
        self.asked: list[tuple[int, float | None]] = []
        self.at_once = False

    def __call__(self, attempt: int, *, retry_after: float | None = None) -> float:
        self.asked.append((attempt, retry_after))
        return 0.0 if self.at_once else retry_delay(attempt, retry_after=retry_after)


@pytest.fixture
def backoff() -> RecordedBackoff:
    return RecordedBackoff()


@pytest.fixture
def job_clock(backoff: RecordedBackoff) -> Clock:
    """The clock the test's jobs run by (`ctx["clock"]`)."""
    return Clock(retry_delay=backoff)


@pytest.fixture
def run_worker(worker_settings: Settings, job_clock: Clock) -> RunWorker:
    """Run a burst worker until its queue is empty; `settings=` overrides the test's."""

    async def run(settings: Settings | None = None, **overrides: Any) -> Worker:
        worker = build_worker(settings or worker_settings, clock=job_clock, **overrides)
        try:
            await asyncio.wait_for(worker.main(), WORKER_DEADLINE_S)
        finally:
            await close_worker(worker)
        return worker

    return run


@pytest.fixture
async def worker_ctx(
    worker_settings: Settings, redis: ArqRedis, job_clock: Clock
) -> AsyncIterator[JobContext]:
    """The `ctx` a worker process builds, as arq would pass it to a job's first try."""
    ctx: dict[str, Any] = {
        "settings": worker_settings,
        "redis": redis,
        "job_try": 1,
        "clock": job_clock,
    }
    await startup(ctx)
    yield cast(JobContext, ctx)
    await shutdown(ctx)


@pytest.fixture
def retry_delays(backoff: RecordedBackoff) -> list[tuple[int, float | None]]:
    """Deferred retries come back at once; the (attempt, retry_after) asked for are kept."""
    backoff.at_once = True
    return backoff.asked


@pytest.fixture
def max_attempts(app: FastAPI) -> Callable[[int], None]:
    """Set `MAX_ATTEMPTS` for audits the test's API accepts afterwards."""

    def set_limit(limit: int) -> None:
        app.state.settings = app.state.settings.model_copy(update={"max_attempts": limit})

    return set_limit


async def submit(client: AsyncClient, **overrides: Any) -> dict[str, Any]:
    response = await client.post("/audits", json=audit_request(**overrides))
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def fetch(client: AsyncClient, audit_id: str) -> dict[str, Any]:
    response = await client.get(f"/audits/{audit_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def model_called(sim: SimulatorHandle, times: int = 1, *, within: float = 10.0) -> None:
    """Wait until the simulator has received `times` requests (a call is in flight or done)."""

    async def requests() -> int:
        return int(sim.stats()["requests"])

    await eventually(requests, lambda n: n >= times, timeout=within)


class LogEvents:
    """A structlog processor keeping each event, context merged in, as a dict."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def __call__(self, logger: Any, method_name: str, event_dict: EventDict) -> EventDict:
        self.events.append(dict(event_dict))
        return event_dict

    def of(self, audit_id: str) -> list[str]:
        """The names of the events logged about one audit, in order."""
        return [e["event"] for e in self.events if e.get("audit_id") == audit_id]

    def clear(self) -> None:
        self.events.clear()


@pytest.fixture
def job_logs(worker_ctx: JobContext) -> Iterator[LogEvents]:
    """The events of jobs run with `worker_ctx` (whose startup configured logging)."""
    events = LogEvents()
    # The list every logger holds (shared/logging.py), just before the renderer.
    processors = structlog.get_config()["processors"]
    processors.insert(len(processors) - 1, events)
    yield events
    processors.remove(events)
