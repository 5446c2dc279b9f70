"""One fault run: the stack from the Procfile, clients submitting, faults, and the checks.

A test builds a `FaultRun`, starts the clients (`submit`), injects its faults while they
run, then `settle`s: every accepted audit must end terminal within the deadline. The
checks every run makes are in `assert_promises_kept`; the figures go to `.auditq/faults/`.
"""

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tests.faults.load import LoadReport, Submission, plan, submit_concurrently
from tests.faults.outcome import (
    Outcome,
    counts_by_status,
    examine,
    faults_injected,
    in_flight,
    wait_until_settled,
    write_figures,
)
from tests.faults.stack import Api, Stack
from tests.fixtures.processes import Process
from tests.fixtures.simulator import SimulatorHandle

# Small T keeps the job timeout (2T + 10 s) and the lease (+5 s) short: worker/timing.py.
MODEL_TIMEOUT_S = 2.0
# Per attempt, 20% faults of which three quarters are transient: 8 attempts all failing
# has a chance of about 3e-7 per audit.
MAX_ATTEMPTS = 8
WORKER_CONCURRENCY = 20
SETTLE_WITHIN_S = 420.0
REPORTED_SETTINGS = ("OPENAI_TIMEOUT_S", "MAX_ATTEMPTS", "WORKER_CONCURRENCY")


def stack_env(
    *, database_url: str, redis_url: str, simulator: SimulatorHandle, **overrides: str
) -> dict[str, str]:
    """The environment of every process of the stack (the variables of `.env.example`)."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "OPENAI_API_KEY": "sk-fault-suite",
        "OPENAI_BASE_URL": simulator.base_url,
        "OPENAI_TIMEOUT_S": str(MODEL_TIMEOUT_S),
        "MAX_ATTEMPTS": str(MAX_ATTEMPTS),
        "WORKER_CONCURRENCY": str(WORKER_CONCURRENCY),
        "QUEUE_NAME": "auditq:faults",
        "LOG_LEVEL": "INFO",
        **overrides,
    }


@dataclass
class FaultRun:
    name: str
    stack: Stack
    api: Api
    simulator: SimulatorHandle
    database_url: str
    # Sent with every submission: `Authorization` under `AUTH=keys`.
    headers: dict[str, str] = field(default_factory=dict)
    load: LoadReport = field(default_factory=LoadReport)
    infrastructure: Counter[str] = field(default_factory=Counter)
    started: float = field(default_factory=time.monotonic)
    _clients: "list[asyncio.Task[LoadReport]]" = field(default_factory=list)

    def submit(self, total: int, *, clients: int = 50, pause_s: float = 0.0, seed: int = 0) -> None:
        """Start `clients` clients submitting `total` audits (single ones and small batches)."""
        self.submit_plan(plan(total, seed=seed), clients=clients, pause_s=pause_s)

    def submit_plan(
        self, submissions: list[Submission], *, clients: int = 50, pause_s: float = 0.0
    ) -> None:
        """Start `clients` clients sharing out these submissions."""
        self._clients.append(
            asyncio.create_task(
                submit_concurrently(
                    self.api.base_url,
                    submissions,
                    self.load,
                    clients=clients,
                    pause_s=pause_s,
                    headers=self.headers,
                )
            )
        )

    async def kill_worker(self, doomed: Process) -> tuple[dict[str, int], Process]:
        """SIGKILL `doomed`, count it, and start a worker in its place: what it was running
        when it died (audit id -> attempt), and its replacement."""
        doomed.signal(signal.SIGKILL)
        assert await doomed.exit_code(within=10) == -signal.SIGKILL
        self.infrastructure["worker_sigkill"] += 1
        return in_flight(doomed), self.stack.start_worker()

    async def accepted(self, count: int, *, within: float = 240.0) -> None:
        """Wait until the API has accepted `count` audits."""
        deadline = time.monotonic() + within
        while self.load.accepted < count:
            if time.monotonic() > deadline or all(task.done() for task in self._clients):
                raise AssertionError(f"not {count} audits accepted: {self.load.figures()}")
            await asyncio.sleep(0.05)

    async def running(self, count: int = 1, *, within: float = 120.0) -> None:
        """Wait until at least `count` audits are running (a worker is mid-job)."""
        deadline = time.monotonic() + within
        while (await counts_by_status(self.database_url)).get("running", 0) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no {count} audits running after {within}s")
            await asyncio.sleep(0.1)

    async def model_requests(self, count: int, *, within: float = 60.0) -> None:
        """Wait until the model has been asked `count` times."""
        deadline = time.monotonic() + within
        while (await asyncio.to_thread(self.simulator.stats))["requests"] < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"not {count} model calls after {within}s")
            await asyncio.sleep(0.05)

    async def settle(self, *, within: float = SETTLE_WITHIN_S) -> Outcome:
        """Wait for the clients, then for every audit to end; what became of them."""
        await asyncio.gather(*self._clients)
        await wait_until_settled(
            self.database_url,
            within=within,
            hopeless=lambda: not any(worker.alive() for worker in self.stack.workers()),
        )
        return await examine(self.database_url, self.load, self.stack.worker_events())

    def record(self, outcome: Outcome, settings: Mapping[str, Any], **extra: Any) -> dict[str, Any]:
        """Write the run's figures to `.auditq/faults/<name>.json`; return them."""
        environment = {name: self.stack.env[name] for name in REPORTED_SETTINGS}
        figures = {
            "settings": {
                **dict(settings),
                **environment,
                "worker_processes_started": len(self.stack.workers()),
            },
            "audits_submitted": self.load.accepted,
            "faults_injected": faults_injected(self.simulator.stats(), **self.infrastructure),
            "model_requests": self.simulator.stats()["requests"],
            **outcome.figures(),
            **self.load.figures(),
            "wall_time_s": round(time.monotonic() - self.started, 1),
            **extra,
        }
        write_figures(self.name, figures)
        return figures


def assert_promises_kept(
    run: FaultRun,
    outcome: Outcome,
    *,
    submitted: int,
    min_succeeded_pct: float | None = 97.0,
    database_down: bool = False,
    killed_mid_attempt: Mapping[str, int] | None = None,
) -> None:
    """The checks of every run: all accepted, none lost, none twice, every failure coded, no 5xx.

    `killed_mid_attempt` (audit id -> attempt) is what SIGKILLed workers were running: such
    an attempt may have committed its finish an instant before the process died with the
    log line unwritten. That one attempt, and only it, may end an audit without a log line.
    """
    context = f"{outcome.problems()}\n{run.load.figures()}\n{run.stack.outputs()}"
    assert run.load.refused == [], context
    assert run.load.unsent == 0, context
    assert run.load.accepted == submitted, context
    assert run.load.unexpected_5xx == 0, context
    if not database_down:
        assert run.load.database_unavailable == 0, context
    assert outcome.lost == [], context
    assert set(outcome.by_status) <= {"succeeded", "failed"}, context
    assert outcome.unexpected_rows == 0, context
    assert outcome.duplicated == [], context
    killed = killed_mid_attempt or {}
    unexplained = [a for a, attempt in outcome.unlogged.items() if killed.get(a) != attempt]
    assert unexplained == [], context
    assert outcome.failed_without_code == [], context
    if min_succeeded_pct is not None:
        assert outcome.succeeded_pct >= min_succeeded_pct, context
