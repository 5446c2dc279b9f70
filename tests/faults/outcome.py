"""What a fault run left behind, read from PostgreSQL and the workers' logs, and its figures.

PostgreSQL is the source of truth for where each audit ended; the workers' JSON logs say
how often each audit was finished (`audit_succeeded` / `audit_failed` are logged once per
fenced write that took effect). The figures of each run go to `.auditq/faults/<test>.json`,
where docs/RELIABILITY.md takes them from.
"""

import asyncio
import json
import os
import platform
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from shared.db import asyncpg_dsn
from tests.faults.load import LoadReport
from tests.fixtures.processes import ROOT, Process

FIGURES_DIR = ROOT / ".auditq" / "faults"
TERMINAL = frozenset({"succeeded", "failed", "cancelled"})
FINISH_EVENTS = frozenset({"audit_succeeded", "audit_failed"})
# What a worker logs when an attempt ends, one way or another.
ATTEMPT_ENDS = {*FINISH_EVENTS, "audit_retry_scheduled", "audit_interrupted", "finish_discarded"}
# Failed by the reconciler, not by a worker: the worker running the last attempt vanished.
WORKER_LOST = "worker_lost"


async def query(
    database_url: str, sql: str, *args: Any, within: float = 60.0
) -> list[asyncpg.Record]:
    """Run one query on a new connection, waiting out a PostgreSQL restart."""
    deadline = time.monotonic() + within
    while True:
        try:
            connection = await asyncpg.connect(asyncpg_dsn(database_url), timeout=5)
            try:
                return list(await connection.fetch(sql, *args))
            finally:
                await connection.close()
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)


async def counts_by_status(database_url: str) -> dict[str, int]:
    rows = await query(database_url, "SELECT status, count(*) AS n FROM audit GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


async def wait_until_settled(
    database_url: str, *, within: float, hopeless: Callable[[], bool] = lambda: False
) -> dict[str, int]:
    """Poll until no audit is queued or running; the last counts.

    Gives up at the deadline, or as soon as `hopeless()` (say, no worker is left).
    """
    deadline = time.monotonic() + within
    while True:
        counts = await counts_by_status(database_url)
        if set(counts) <= TERMINAL or time.monotonic() > deadline or hopeless():
            return counts
        await asyncio.sleep(1.0)


@dataclass
class Outcome:
    """Where the accepted audits ended, and how often each was finished."""

    accepted: int
    by_status: dict[str, int]
    failures_by_code: dict[str, int]
    lost: list[str] = field(default_factory=list)  # accepted, but missing or not terminal
    unexpected_rows: int = 0  # audits in the database that no client was told about
    duplicated: list[str] = field(default_factory=list)  # finished more than once
    # Ended by a worker whose finish was never logged: audit id -> the attempt that ended it.
    unlogged: dict[str, int] = field(default_factory=dict)
    failed_without_code: list[str] = field(default_factory=list)
    attempts: dict[int, int] = field(default_factory=dict)

    @property
    def succeeded_pct(self) -> float:
        return 100.0 * self.by_status.get("succeeded", 0) / max(1, self.accepted)

    def figures(self) -> dict[str, Any]:
        return {
            "audits_by_status": self.by_status,
            "failures_by_code": self.failures_by_code,
            "attempts_histogram": {str(k): v for k, v in sorted(self.attempts.items())},
            "lost": len(self.lost),
            "duplicated": len(self.duplicated),
            "unexpected_rows": self.unexpected_rows,
            "finished_but_not_logged": len(self.unlogged),
            "failed_without_error_code": len(self.failed_without_code),
            "succeeded_pct": round(self.succeeded_pct, 2),
        }

    def problems(self) -> str:
        """A short account of what is wrong, for assertion messages."""
        return json.dumps(
            {
                "lost": self.lost[:10],
                "duplicated": self.duplicated[:10],
                "unlogged": list(self.unlogged)[:10],
                "failed_without_code": self.failed_without_code[:10],
                **self.figures(),
            },
            indent=1,
        )


async def examine(
    database_url: str, load: LoadReport, worker_events: list[dict[str, Any]]
) -> Outcome:
    rows = await query(
        database_url,
        "SELECT id::text AS id, batch_id::text AS batch_id, status, error_code, attempts"
        " FROM audit",
    )
    by_id = {row["id"]: row for row in rows}
    by_batch = Counter(row["batch_id"] for row in rows if row["batch_id"] is not None)
    finished = Counter(
        event["audit_id"] for event in worker_events if event.get("event") in FINISH_EVENTS
    )
    lost = [i for i in load.audit_ids if i not in by_id or by_id[i]["status"] not in TERMINAL]
    lost += [f"batch {b}" for b, size in load.batches.items() if by_batch[b] != size]
    lost += [r["id"] for r in rows if r["batch_id"] in load.batches and r["status"] not in TERMINAL]
    ended_by_worker = {
        r["id"]: r["attempts"]
        for r in rows
        if r["status"] in ("succeeded", "failed") and r["error_code"] != WORKER_LOST
    }
    failed = [r for r in rows if r["status"] == "failed"]
    return Outcome(
        accepted=load.accepted,
        by_status=dict(Counter(r["status"] for r in rows)),
        failures_by_code=dict(Counter(r["error_code"] or "(none)" for r in failed)),
        lost=lost,
        unexpected_rows=len(rows) - load.accepted,
        duplicated=[audit_id for audit_id, n in finished.items() if n > 1],
        unlogged={a: n for a, n in ended_by_worker.items() if finished[a] == 0},
        failed_without_code=[r["id"] for r in failed if not r["error_code"]],
        attempts=dict(Counter(r["attempts"] for r in rows)),
    )


def faults_injected(simulator_stats: dict[str, Any], **infrastructure: int) -> dict[str, int]:
    """The simulator's faults by kind (its `ok` answers left out), and the test's own."""
    outcomes: dict[str, int] = simulator_stats["outcomes"]
    model = {f"model_{kind}": n for kind, n in sorted(outcomes.items()) if kind != "ok"}
    return {**model, **{k: v for k, v in infrastructure.items() if v}}


def write_figures(name: str, figures: dict[str, Any]) -> Path:
    """Save one run's figures as `.auditq/faults/<name>.json`."""
    FIGURES_DIR.mkdir(parents=True, exist_ok=True)
    path = FIGURES_DIR / f"{name}.json"
    record = {
        "test": name,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "load_average_1m": round(os.getloadavg()[0], 2),
        },
        **figures,
    }
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def in_flight(worker: Process) -> dict[str, int]:
    """What this worker was running when it stopped (attempts with no logged end): id -> attempt."""
    started: dict[str, int] = {}
    for event in worker.events():
        if event.get("event") == "audit_started":
            started[event["audit_id"]] = event["attempt"]
        elif event.get("event") in ATTEMPT_ENDS:
            started.pop(event["audit_id"], None)
    return started
