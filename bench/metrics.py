"""Figure 12: what metrics cost. A scrape of the API's `GET /metrics` with 1,000,000 audits
in the table, and submit and worker throughput with metrics on against off, in one run.

Scrape cost. A scratch database is filled in SQL as for figure 5 (reads.FILL: 1,000,000
audits, 1% of them queued; 10,000 with --quick). Two API processes on it: the API as it
ships, whose fleet-wide figures are read at most every 5 s (`FLEET_TTL_S`), so that nearly
every scrape of a closed loop is served from that cache; and the same API reading them on
every scrape (`bench/baselines/metrics_apps.py`, `uncached`): the cost of the first scrape
in five seconds. Closed loops of `GET /metrics` on 4 connections, alternated, medians; the
API process's CPU from /proc, and PostgreSQL's from the /proc of the database's backends.

Overhead, side by side, alternated, medians:
- submit: `POST /api/v1/audits` closed-loop peaks of the API as it ships, scraped every
  `SCRAPE_EVERY_S`, against the API whose request gate records nothing (`unmetered`);
- worker: one worker process (`python -m worker`, WORKER_CONCURRENCY=100, the simulator
  at a fixed latency short enough that the worker's CPU, not the model, sets the rate)
  with `METRICS_PORT` set and scraped every `SCRAPE_EVERY_S`, against one without.
A Prometheus scrapes every 15 s by default: once a second is a harsher load than any
deployment's.
"""

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import UTC, datetime
from types import SimpleNamespace
from uuid import uuid4

import asyncpg
import httpx
from prometheus_client import generate_latest

from api.metrics import ApiMetrics
from bench import audits
from bench.common import (
    Load,
    Proc,
    Run,
    auditq_env,
    cpu_seconds,
    drop_queue,
    median,
    new_queue_name,
    peak_load,
    scratch_database,
    stack,
    start_apis,
    start_simulator,
    start_worker,
    steady_rate,
)
from bench.reads import FILL
from bench.results import Section
from bench.workload import audit_json
from cli.dev import free_port
from shared.audits import repository
from shared.audits.priority import Priority
from shared.audits.repository import ClaimedAudit
from shared.audits.runs import AuditEnded
from shared.audits.status import AuditStatus
from shared.config import Settings as AuditqSettings
from shared.db import asyncpg_dsn, create_engine, statement_connection
from shared.llm.client import REQUEST_OK, ModelRequest
from worker.metrics import PrometheusMetrics

OVERHEAD_TARGET = 0.95  # metrics on may cost at most 5%
SCRAPE_EVERY_S = 1.0
SCRAPE_CONNECTIONS = 4
WORKER_CONCURRENCY = 100
WORKER_LATENCY_MS = "20"
MODES = ("on", "off")
FLEET_READS = 20
MODEL = "gpt-4o-mini"


@dataclass(frozen=True)
class Settings:
    rows: int
    runs: int
    seconds: float
    worker_runs: int
    worker_jobs: int


def _settings(quick: bool) -> Settings:
    if quick:
        return Settings(rows=10_000, runs=1, seconds=1.0, worker_runs=1, worker_jobs=100)
    return Settings(rows=1_000_000, runs=5, seconds=5.0, worker_runs=5, worker_jobs=2000)


# --- scrape cost ------------------------------------------------------------------------


@dataclass(frozen=True)
class Scrapes:
    load: Load
    api_cpu_ms: float
    postgres_cpu_ms: float


async def _fill(database_url: str, rows: int) -> int:
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        await connection.execute(FILL, rows)
        await connection.execute("ANALYZE audit")
        queued: int = await connection.fetchval(
            "SELECT count(*) FROM audit WHERE status = 'queued'"
        )
    finally:
        await connection.close()
    return queued


async def _backend_pids(database_url: str) -> list[int]:
    """The PostgreSQL backends serving the database, this connection's aside."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        rows = await connection.fetch(
            "SELECT pid FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return [row["pid"] for row in rows]


def _backends_cpu_s(database_url: str) -> dict[int, float]:
    cpu: dict[int, float] = {}
    for pid in asyncio.run(_backend_pids(database_url)):
        try:
            cpu[pid] = cpu_seconds(pid)
        except OSError:  # a backend that ended meanwhile
            continue
    return cpu


def _scrape_peak(base: str, server: Proc, database_url: str, seconds: float) -> Scrapes:
    """A closed loop of `GET /metrics`, and the CPU each scrape cost the API and PostgreSQL."""
    api_before, db_before = server.cpu_s(), _backends_cpu_s(database_url)
    load = peak_load(base, ["/metrics"], connections=SCRAPE_CONNECTIONS, duration_s=seconds)
    api_s = server.cpu_s() - api_before
    db_after = _backends_cpu_s(database_url)
    db_s = sum(after - db_before.get(pid, 0.0) for pid, after in db_after.items())
    scrapes = max(1, load.requests)
    return Scrapes(load, api_s * 1000 / scrapes, db_s * 1000 / scrapes)


def _check_page(base: str) -> None:
    """The page a scrape gets has the fleet-wide figures: no scrape error hides them."""
    text = httpx.get(f"{base}/metrics", timeout=30).text
    if "auditq_queue_depth{" not in text or "auditq_scrape_errors_total{" in text:
        raise RuntimeError(f"GET /metrics lacks the fleet-wide figures:\n{text[:2000]}")


async def _fleet_read_ms(database_url: str) -> float:
    """The median time of one read of the fleet-wide figures (`repository.fleet`), alone."""
    engine = create_engine(AuditqSettings(database_url=database_url), pool_size=1)
    took: list[float] = []
    try:
        async with statement_connection(engine) as conn:
            for index in range(FLEET_READS + 3):  # three to warm the connection's caches
                started = time.perf_counter()
                await repository.fleet(conn)
                if index >= 3:
                    took.append((time.perf_counter() - started) * 1000)
    finally:
        await engine.dispose()
    return median(took)


def _measure_scrapes(
    run_: Run, db: str, cfg: Settings
) -> tuple[int, float, dict[str, list[Scrapes]]]:
    queued = asyncio.run(_fill(db, cfg.rows))
    fleet_ms = asyncio.run(_fleet_read_ms(db))
    queues = {name: new_queue_name(f"metrics-{name}") for name in ("cached", "uncached")}
    redis_url = run_.servers.redis_url
    with stack() as procs:
        bases = dict(
            zip(
                queues,
                start_apis(
                    procs,
                    [
                        (
                            f"api-{name}",
                            app,
                            "/api/v1/health/live",
                            auditq_env(db, redis_url, queues[name]),
                        )
                        for name, app in (
                            ("cached", "api.app:create_app"),
                            ("uncached", "bench.baselines.metrics_apps:uncached"),
                        )
                    ],
                ),
                strict=True,
            )
        )
        servers = dict(zip(queues, procs.procs[-2:], strict=True))
        for base in bases.values():
            _check_page(base)
            peak_load(base, ["/metrics"], connections=SCRAPE_CONNECTIONS, duration_s=1.0)
        measured: dict[str, list[Scrapes]] = {name: [] for name in queues}
        for index in range(cfg.runs):
            order = list(queues) if index % 2 == 0 else list(queues)[::-1]
            for name in order:
                measured[name].append(_scrape_peak(bases[name], servers[name], db, cfg.seconds))
    for queue in queues.values():
        drop_queue(redis_url, queue)
    return queued, fleet_ms, measured


# --- overhead: submit ---------------------------------------------------------------------


@contextmanager
def _scraped(url: str | None) -> Iterator[list[int]]:
    """GET `url` every `SCRAPE_EVERY_S` in a thread, as Prometheus would; the scrapes that
    answered, as a one-item list filled in at the end. No URL: nothing is scraped."""
    answered = [0]
    stop = threading.Event()

    def scrape() -> None:
        with httpx.Client(timeout=5) as client:
            while not stop.wait(SCRAPE_EVERY_S):
                try:
                    answered[0] += client.get(url or "").status_code == 200
                except httpx.HTTPError:
                    continue

    thread = threading.Thread(target=scrape, daemon=True)
    if url is not None:
        thread.start()
    try:
        yield answered
    finally:
        stop.set()
        if url is not None:
            thread.join()


@dataclass(frozen=True)
class Submits:
    load: Load
    cpu_ms: float


def _measure_submits(run_: Run, db: str, cfg: Settings) -> dict[str, list[Submits]]:
    asyncio.run(audits.truncate(db))
    queues = {mode: new_queue_name(f"metrics-submit-{mode}") for mode in MODES}
    redis_url = run_.servers.redis_url
    apps = {"on": "api.app:create_app", "off": "bench.baselines.metrics_apps:unmetered"}
    with stack() as procs:
        bases = dict(
            zip(
                MODES,
                start_apis(
                    procs,
                    [
                        (
                            f"api-metrics-{mode}",
                            apps[mode],
                            "/api/v1/health/live",
                            auditq_env(db, redis_url, queues[mode]),
                        )
                        for mode in MODES
                    ],
                ),
                strict=True,
            )
        )
        servers = dict(zip(MODES, procs.procs[-2:], strict=True))
        for base in bases.values():  # warm both: imports, pools, statement caches
            _warm(base)
        measured: dict[str, list[Submits]] = {mode: [] for mode in MODES}
        for index in range(cfg.runs):
            for mode in MODES if index % 2 == 0 else MODES[::-1]:
                scrape_url = f"{bases[mode]}/metrics" if mode == "on" else None
                before = servers[mode].cpu_s()
                with _scraped(scrape_url):
                    load = _submit_peak(bases[mode], cfg.seconds)
                cpu_ms = (servers[mode].cpu_s() - before) * 1000 / max(1, load.requests)
                measured[mode].append(Submits(load, cpu_ms))
    for queue in queues.values():
        drop_queue(redis_url, queue)
    return measured


def _warm(base: str) -> None:
    """A second of submits; refusals while the pool first fills up are no matter here."""
    with suppress(RuntimeError):
        _submit_peak(base, 1.0)


def _submit_peak(base: str, seconds: float) -> Load:
    body = audit_json()
    return peak_load(base, ["/api/v1/audits"], method="POST", body=body, duration_s=seconds)


# --- overhead: worker ---------------------------------------------------------------------


@dataclass(frozen=True)
class WorkerRun:
    rate: float
    cpu_ms: float
    scrapes: int


def _worker_run(run_: Run, db: str, simulator: str, mode: str, jobs: int) -> WorkerRun:
    redis_url = run_.servers.redis_url
    queue = new_queue_name(f"metrics-worker-{mode}")
    asyncio.run(audits.truncate(db))
    extra = {"OPENAI_BASE_URL": simulator, "WORKER_CONCURRENCY": str(WORKER_CONCURRENCY)}
    port = free_port()
    if mode == "on":
        extra["METRICS_PORT"] = str(port)
    with stack() as procs:
        worker = start_worker(
            procs, auditq_env(db, redis_url, queue, **extra), name=f"worker-{mode}"
        )
        scrape_url = f"http://127.0.0.1:{port}/metrics" if mode == "on" else None
        cpu = worker.cpu_s()
        with _scraped(scrape_url) as scrapes:
            timeline = asyncio.run(_submit_and_wait(db, redis_url, queue, jobs))
        measured = WorkerRun(
            rate=steady_rate(timeline.finished),
            cpu_ms=(worker.cpu_s() - cpu) * 1000 / jobs,
            scrapes=scrapes[0],
        )
        if timeline.statuses.get("succeeded", 0) != jobs:
            raise RuntimeError(f"{mode}: {timeline.statuses} of {jobs} audits")
    drop_queue(redis_url, queue)
    return measured


async def _submit_and_wait(db: str, redis_url: str, queue: str, jobs: int) -> audits.Timeline:
    async with audits.client(db, redis_url, queue) as c:
        await audits.submit(c, jobs)
    return await audits.wait_until_done(db, jobs, timeout_s=60 + jobs / 10)


def _measure_workers(run_: Run, db: str, cfg: Settings) -> dict[str, list[WorkerRun]]:
    measured: dict[str, list[WorkerRun]] = {mode: [] for mode in MODES}
    with stack() as procs:
        simulator = start_simulator(procs, WORKER_LATENCY_MS)
        for index in range(cfg.worker_runs):
            for mode in MODES if index % 2 == 0 else MODES[::-1]:
                measured[mode].append(_worker_run(run_, db, simulator, mode, cfg.worker_jobs))
    return measured


# --- the instrumentation alone ---------------------------------------------------------------


@dataclass(frozen=True)
class Instrumentation:
    """What the instrumentation costs in-process, in microseconds of CPU."""

    per_audit_us: float  # a worker's: one model request told, one audit ended
    per_request_us: float  # the API's: one request observed
    worker_scrape_us: float  # rendering a worker's page, every label set filled


def _cpu_us(action: Callable[[], object], times: int) -> float:
    started = time.process_time()
    for _ in range(times):
        action()
    return (time.process_time() - started) * 1e6 / times


def _measure_instrumentation(quick: bool) -> Instrumentation:
    """The seams' calls timed in a loop: what the throughput runs cannot resolve."""
    times = 2_000 if quick else 200_000
    worker = PrometheusMetrics()
    request = ModelRequest(MODEL, REQUEST_OK, 0.5, 900, 300)
    ended = AuditEnded(_claimed_audit(), AuditStatus.SUCCEEDED, None)

    def audit() -> None:
        worker.model_requested(request)
        worker.audit_ended(ended)

    api = ApiMetrics()
    scope = {"method": "POST", "route": SimpleNamespace(path="/api/v1/audits")}
    worker.job_retried("model_timeout")
    worker.rate_limit_waited(MODEL)
    return Instrumentation(
        per_audit_us=_cpu_us(audit, times),
        per_request_us=_cpu_us(lambda: api.observe(scope, 202, 0.002), times),
        worker_scrape_us=_cpu_us(lambda: generate_latest(worker.registry), max(10, times // 100)),
    )


def _claimed_audit() -> ClaimedAudit:
    return ClaimedAudit(
        id=uuid4(),
        tenant="default",
        attempts=1,
        model=MODEL,
        subject="Product page",
        content="Made from recycled steel.",
        criteria=[],
        pass_threshold=70.0,
        samples=1,
        request_id=None,
        trace_context=None,
        priority=Priority.INTERACTIVE,
        created_at=datetime.now(UTC),
        batch_id=None,
        batch_notifies=False,
    )


# --- the section ----------------------------------------------------------------------------


def run(run_: Run) -> list[Section]:
    cfg = _settings(run_.quick)
    with scratch_database(run_.servers, "auditq_bench_metrics") as db:
        queued, fleet_ms, scrapes = _measure_scrapes(run_, db, cfg)
        submits = _measure_submits(run_, db, cfg)
        workers = _measure_workers(run_, db, cfg)
    instrumentation = _measure_instrumentation(run_.quick)
    section = Section("metrics", "12. Metrics: what a scrape costs, what metrics cost the work")
    section.add(
        "One command runs all of it: `uv run python -m bench metrics` (about 6 minutes; "
        "`--quick` checks it runs). Scrape cost first, then the overhead.",
        "",
    )
    _scrape_part(section, cfg, queued, fleet_ms, scrapes)
    _overhead_part(section, cfg, submits, workers, instrumentation)
    return [section]


def _scrape_part(
    section: Section,
    cfg: Settings,
    queued: int,
    fleet_ms: float,
    scrapes: dict[str, list[Scrapes]],
) -> None:
    section.add(
        f"`GET /metrics` with {cfg.rows:,} audits in the table ({queued:,} of them queued, "
        f"the rest ended), {SCRAPE_CONNECTIONS} connections, {cfg.runs} alternated runs of "
        "each API process, medians. *Cached*: the API as it ships, the fleet-wide figures "
        "read at most every 5 s; *uncached*: read on every scrape (three statements through "
        "the indexes on queued and running audits, and one Redis round trip), what the first "
        "scrape in five seconds costs. *PostgreSQL CPU*: the database's backends, from /proc.",
        "",
    )
    rows = []
    for name in ("uncached", "cached"):
        runs = scrapes[name]
        rows.append(
            [
                name,
                f"{median([s.load.rps for s in runs]):,.0f}",
                f"{median([s.load.p50_ms for s in runs]):.2f} / "
                f"{median([s.load.p99_ms for s in runs]):.2f} ms",
                f"{median([s.api_cpu_ms for s in runs]):.2f}",
                f"{median([s.postgres_cpu_ms for s in runs]):.2f}",
            ]
        )
        section.target(
            f"12 /metrics scrape CPU, {name} ({cfg.rows:,} audits)",
            "—",
            f"API {median([s.api_cpu_ms for s in runs]):.2f} ms, "
            f"PostgreSQL {median([s.postgres_cpu_ms for s in runs]):.2f} ms",
            None,
        )
    section.table(
        ["scrape", "scrapes/s", "p50 / p99", "API CPU ms/scrape", "PostgreSQL CPU ms/scrape"],
        rows,
    )
    section.add(
        f"One read of the fleet-wide figures alone (`repository.fleet`, its three statements "
        f"on one connection, nothing else running): **{fleet_ms:.1f} ms** (median of "
        f"{FLEET_READS}). Its cost follows the queued backlog, not the table: the depth and "
        "the oldest age by priority and tenant (one statement, the tenants' budgets looked "
        "at once per tenant) read every queued audit through `ix_audit_unfinished` and "
        "visit its row, a page apiece when the queued audits are scattered through the "
        "table as they are here (`EXPLAIN (ANALYZE, BUFFERS)` shows it); the running count "
        "and the batches read the index alone.",
        "",
    )


def _spread(values: list[float]) -> float:
    """(max - min) / median: how far apart runs of the same thing came out."""
    return (max(values) - min(values)) / median(values)


def _overhead_part(
    section: Section,
    cfg: Settings,
    submits: dict[str, list[Submits]],
    workers: dict[str, list[WorkerRun]],
    instrumentation: Instrumentation,
) -> None:
    section.add(
        f"Metrics **on** against **off**, alternated, medians; *on* is scraped every "
        f"{SCRAPE_EVERY_S:g} s. Submit: `POST /api/v1/audits`, one uvicorn process, 32 "
        f"connections, {cfg.runs} runs each; *off* is the API whose request gate records "
        "nothing. Worker: one `python -m worker`, "
        f"WORKER_CONCURRENCY={WORKER_CONCURRENCY}, the simulator at {WORKER_LATENCY_MS} ms "
        f"(the worker's CPU sets the rate), {cfg.worker_jobs:,} audits a run, "
        f"{cfg.worker_runs} runs each; *on* has METRICS_PORT set.",
        "",
    )
    rows = []
    submit_rps = {mode: median([s.load.rps for s in submits[mode]]) for mode in MODES}
    for mode in MODES:
        rows.append(
            [
                f"submit, metrics {mode}",
                f"{submit_rps[mode]:,.0f} req/s",
                ", ".join(f"{s.load.rps:,.0f}" for s in submits[mode]),
                f"{median([s.cpu_ms for s in submits[mode]]):.2f} ms/request",
            ]
        )
    worker_rate = {mode: median([w.rate for w in workers[mode]]) for mode in MODES}
    for mode in MODES:
        rows.append(
            [
                f"worker, metrics {mode}",
                f"{worker_rate[mode]:,.1f} audits/s",
                ", ".join(f"{w.rate:,.1f}" for w in workers[mode]),
                f"{median([w.cpu_ms for w in workers[mode]]):.2f} ms/audit",
            ]
        )
    section.table(["", "throughput (median)", "runs", "CPU"], rows)
    scrapes = sum(w.scrapes for w in workers["on"])
    noise = {
        "submit": _spread([s.load.rps for s in submits["off"]]),
        "worker": _spread([w.rate for w in workers["off"]]),
    }
    section.add(
        f"The metered workers answered {scrapes} scrapes in all. The unmetered runs alone "
        f"spread {noise['submit']:.0%} (submit) and {noise['worker']:.0%} (worker) around "
        "their medians: a ratio of medians resolves a 5% cost only when that spread is "
        "small, on a quiet machine.",
        "",
    )
    audit_cpu_us = median([w.cpu_ms for w in workers["off"]]) * 1000
    request_cpu_us = median([s.cpu_ms for s in submits["off"]]) * 1000
    per_audit, per_request = instrumentation.per_audit_us, instrumentation.per_request_us
    section.add(
        "The instrumentation alone, its calls timed in a loop in one process (CPU): "
        f"**{per_audit:.1f} µs per audit** in a worker (a model request told, the audit's "
        f"end told), {per_audit / audit_cpu_us:.2%} of the {audit_cpu_us / 1000:.2f} ms of "
        f"CPU an audit cost the unmetered worker; **{per_request:.1f} µs per request** in "
        f"the API, {per_request / request_cpu_us:.2%} of a submit's "
        f"{request_cpu_us / 1000:.2f} ms; a worker's page rendered for a scrape, "
        f"{instrumentation.worker_scrape_us:.0f} µs. The throughput runs above differ by "
        "more than that from run to run on a shared machine: these say what the metrics "
        "themselves take.",
        "",
    )
    section.target(
        "12 instrumentation CPU per audit (worker) / per request (API)",
        "—",
        f"{per_audit:.1f} µs ({per_audit / audit_cpu_us:.2%}) / "
        f"{per_request:.1f} µs ({per_request / request_cpu_us:.2%})",
        None,
    )
    for what, rates in (("submit req/s", submit_rps), ("worker audits/s", worker_rate)):
        ratio = rates["on"] / rates["off"]
        section.target(
            f"12 {what}, metrics on vs off",
            f"≥ {OVERHEAD_TARGET}x",
            f"{ratio:.2f}x ({rates['on']:,.1f} vs {rates['off']:,.1f})",
            ratio >= OVERHEAD_TARGET,
        )
