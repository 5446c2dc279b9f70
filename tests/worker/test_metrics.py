"""A worker's Prometheus metrics on `METRICS_PORT` (worker/metrics.py), read over HTTP.

Audits are submitted through the API and run by a real arq worker against the simulator;
the figures a scrape shows are checked against what the audits themselves recorded.
"""

import asyncio
import os
import socket
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from arq import Retry, Worker
from httpx import AsyncClient
from prometheus_client.parser import text_string_to_metric_families

from cli.dev import free_port
from shared.audits.runs import Clock
from shared.config import Settings
from shared.db import SessionFactory
from shared.tenants.caller import DEFAULT_TENANT
from tests.fixtures.polling import eventually
from tests.fixtures.processes import Process
from tests.fixtures.simulator import SimulatorHandle
from tests.rows import expire_lease, update_audit
from tests.worker.conftest import build_worker, close_worker, fetch, submit
from worker import metrics as worker_metrics
from worker.context import JobContext, shutdown, startup
from worker.reconciler import reconcile
from worker.tasks import run_audit

MODEL = "gpt-4o-mini"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample of a scrape, by name and labels."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 when the scrape has none (a label set never counted)."""
    return samples.get((name, frozenset(labels.items())), 0.0)


WORKER_FAMILIES = {
    "auditq_audits_finished",
    "auditq_model_request_duration_seconds",
    "auditq_model_tokens",
    "auditq_audit_duration_seconds",
    "auditq_job_retries",
    "auditq_rate_limit_waits",
    "auditq_model_replies_invalid",
    "auditq_model_cost_usd",
    "auditq_webhook_tries",
}


async def scrape_text(port: int) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"http://127.0.0.1:{port}/metrics")
    assert response.status_code == 200
    return response.text


async def scrape(port: int) -> Samples:
    return parse(await scrape_text(port))


def families(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


@pytest.fixture
def metered(worker_settings: Settings) -> Settings:
    """The worker's settings with `METRICS_PORT` set."""
    return worker_settings.model_copy(update={"metrics_port": free_port()})


@asynccontextmanager
async def serving(settings: Settings, clock: Clock) -> AsyncIterator[tuple[Worker, int]]:
    """A long-running worker (not a burst), and the port its metrics are served on."""
    worker = build_worker(settings, clock=clock, burst=False, poll_delay=0.05)
    running = asyncio.create_task(worker.main())
    try:

        async def server() -> Any:
            return worker.ctx.get("metrics_server")

        started = await eventually(server, lambda found: found is not None)
        yield worker, started.port
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
        await close_worker(worker)


async def test_a_scrape_shows_what_the_finished_audits_recorded(
    client: AsyncClient,
    sim: SimulatorHandle,
    metered: Settings,
    job_clock: Clock,
    retry_delays: list[tuple[int, float | None]],
) -> None:
    sim.script(["500", "ok"], subject="Flaky page")
    sim.script(["refusal"], subject="Refused page")
    subjects = ["Page 1", "Page 2", "Page 3", "Flaky page", "Refused page"]
    submitted = [await submit(client, subject=subject) for subject in subjects]

    async with serving(metered, job_clock) as (_, port):

        async def statuses() -> list[str]:
            return [(await fetch(client, audit["id"]))["status"] for audit in submitted]

        await eventually(statuses, lambda found: "queued" not in found and "running" not in found)
        samples = await scrape(port)

    audits = [await fetch(client, audit["id"]) for audit in submitted]
    assert [a["status"] for a in audits] == ["succeeded"] * 4 + ["failed"]
    finished = "auditq_audits_finished_total"
    assert value(samples, finished, status="succeeded", error_code="", model=MODEL) == 4
    assert value(samples, finished, status="failed", error_code="model_refused", model=MODEL) == 1
    # Every token the provider charged, the refusal's included, is on some audit's row.
    for kind in ("prompt", "completion"):
        recorded = sum(a["usage"][f"{kind}_tokens"] for a in audits)
        assert recorded > 0
        assert value(samples, "auditq_model_tokens_total", model=MODEL, kind=kind) == recorded
    # And every dollar: the counter agrees with what the audits say they cost.
    spent = sum(a["usage"]["cost_usd"] for a in audits)
    assert spent > 0
    cost = value(samples, "auditq_model_cost_usd_total", model=MODEL, tenant=DEFAULT_TENANT)
    assert cost == pytest.approx(spent, rel=1e-9)
    requests = "auditq_model_request_duration_seconds_count"
    assert value(samples, requests, model=MODEL, outcome="ok") == 4
    assert value(samples, requests, model=MODEL, outcome="model_server_error") == 1
    assert value(samples, requests, model=MODEL, outcome="model_refused") == 1
    assert value(samples, "auditq_job_retries_total", reason="model_server_error") == 1
    durations = "auditq_audit_duration_seconds"
    assert value(samples, f"{durations}_count", priority="interactive") == 5
    assert 0 < value(samples, f"{durations}_sum", priority="interactive") < 60
    assert len(retry_delays) == 1


@pytest.fixture
async def metered_ctx(metered: Settings, redis: Any, job_clock: Clock) -> AsyncIterator[JobContext]:
    """A worker's `ctx` with `METRICS_PORT` set and a limit of one request a minute."""
    limited = metered.model_copy(update={"model_rpm_limits": {MODEL: 1}})
    ctx: dict[str, Any] = {"settings": limited, "redis": redis, "job_try": 1, "clock": job_clock}
    await startup(ctx)
    yield ctx  # type: ignore[misc]
    await shutdown(ctx)


async def test_a_job_sent_back_by_the_rate_limits_is_counted_as_a_wait(
    client: AsyncClient, sim: SimulatorHandle, metered_ctx: JobContext
) -> None:
    first, second = await submit(client), await submit(client)
    await run_audit(metered_ctx, first["id"])

    with pytest.raises(Retry):
        await run_audit(metered_ctx, second["id"])

    server = metered_ctx["metrics_server"]
    assert server is not None
    samples = await scrape(server.port)
    assert value(samples, "auditq_rate_limit_waits_total", model=MODEL) == 1
    assert value(samples, "auditq_job_retries_total", reason="rate_limit_wait") == 1
    finished = value(
        samples, "auditq_audits_finished_total", status="succeeded", error_code="", model=MODEL
    )
    assert finished == 1


async def test_invalid_replies_are_counted_by_kind(
    client: AsyncClient, sim: SimulatorHandle, metered: Settings, redis: Any, job_clock: Clock
) -> None:
    sim.script(["contradiction", "ok"], subject="Corrected page")
    sim.script(["malformed", "contradiction"], subject="Failed page")
    corrected = await submit(client, subject="Corrected page")
    failed = await submit(client, subject="Failed page")
    ctx: dict[str, Any] = {"settings": metered, "redis": redis, "job_try": 1, "clock": job_clock}
    await startup(ctx)
    try:
        await run_audit(ctx, corrected["id"])  # type: ignore[arg-type]
        await run_audit(ctx, failed["id"])  # type: ignore[arg-type]
        samples = await scrape(ctx["metrics_server"].port)
    finally:
        await shutdown(ctx)

    assert (await fetch(client, failed["id"]))["error"]["code"] == "invalid_model_output"
    invalid = "auditq_model_replies_invalid_total"
    assert value(samples, invalid, kind="contradiction") == 2
    assert value(samples, invalid, kind="not_json") == 1


async def test_an_audit_the_reconciler_fails_is_counted_as_worker_lost(
    client: AsyncClient,
    session_factory: SessionFactory,
    metered: Settings,
    redis: Any,
    job_clock: Clock,
) -> None:
    audit = await submit(client)
    await update_audit(session_factory, audit["id"], status="running", attempts=3, attempt_limit=3)
    await expire_lease(session_factory, audit["id"])
    ctx: dict[str, Any] = {"settings": metered, "redis": redis, "job_try": 1, "clock": job_clock}
    await startup(ctx)
    try:
        counts = await reconcile(ctx)  # type: ignore[arg-type]
        samples = await scrape(ctx["metrics_server"].port)
    finally:
        await shutdown(ctx)

    assert counts["leases_failed"] == 1
    assert (await fetch(client, audit["id"]))["error"]["code"] == "worker_lost"
    finished = value(
        samples,
        "auditq_audits_finished_total",
        status="failed",
        error_code="worker_lost",
        model=MODEL,
    )
    assert finished == 1
    assert value(samples, "auditq_audit_duration_seconds_count", priority="interactive") == 1


async def test_without_metrics_port_nothing_is_served(worker_ctx: JobContext) -> None:
    assert worker_ctx["settings"].metrics_port is None
    assert worker_ctx["metrics_server"] is None
    assert isinstance(worker_ctx["metrics"], worker_metrics.Unrecorded)


@pytest.fixture
def held_port() -> Iterator[int]:
    """A port another process would hold: bound and listening."""
    with socket.create_server(("0.0.0.0", 0)) as sock:
        yield sock.getsockname()[1]


async def test_a_port_in_use_is_passed_over_for_the_next(held_port: int) -> None:
    metrics = worker_metrics.PrometheusMetrics()

    server = worker_metrics.serve(metrics.registry, first_port=held_port)
    try:
        assert server.port > held_port
        text = await scrape_text(server.port)
    finally:
        await server.close()

    assert families(text) == WORKER_FAMILIES


def worker_process(settings: Settings, log_dir: Path, name: str) -> Process:
    """`python -m worker`, the Procfile's worker, configured by its environment."""
    env = {
        **os.environ,
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_NAME": settings.queue_name,
        "OPENAI_BASE_URL": settings.openai_base_url or "",
        "METRICS_PORT": str(settings.metrics_port),
        "LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    }
    return Process(name, [sys.executable, "-m", "worker"], env, log_dir)


async def test_two_workers_on_one_host_serve_on_ports_of_their_own(
    metered: Settings, tmp_path: Path
) -> None:
    workers = [worker_process(metered, tmp_path, f"worker-{n}") for n in (1, 2)]
    try:

        async def ports() -> list[int]:
            return [
                event["port"]
                for worker in workers
                for event in worker.events()
                if event.get("event") == "metrics_serving"
            ]

        served = await eventually(ports, lambda found: len(found) == 2, timeout=60)
        assert len(set(served)) == 2
        assert min(served) >= (metered.metrics_port or 0)
        for port in served:
            assert families(await scrape_text(port)) == WORKER_FAMILIES
        assert all(worker.alive() for worker in workers)
    finally:
        for worker in workers:
            worker.stop()
