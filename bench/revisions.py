"""Figure 10: this tree against another revision: submit and GET by id, side by side.

`python -m bench revisions --against REV`. A change's cost shows best against the code
before it, measured in the same run on the same machine: REV is checked out in a git
worktree under `.auditq/bench/revisions/` with its own locked environment
(`uv sync --frozen`), and each tree's API (one uvicorn worker, `AUTH=none`) runs on a
scratch database its own migrations made. Closed-loop peaks of `POST /api/v1/audits`
and `GET /api/v1/audits/{id}` (ids of 300 audits submitted first), alternated between
the two, several runs, medians of req/s and of the server's CPU per request: the
machine is shared, and CPU per request is the steadier of the two.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx

from bench.api_load import OPERATIONS, api_peak
from bench.common import (
    ROOT,
    WORK_DIR,
    Load,
    Run,
    Tree,
    auditq_env,
    drop_queue,
    median,
    new_queue_name,
    scratch_database,
    stack,
    start_apis,
)
from bench.results import Section
from bench.workload import audit_json

TREES = ("this tree", "against")
READ_IDS = 300
# Runs of the same tree differ by a few percent on this shared machine.
NO_REGRESSION = 0.97


def checkout(revision: str) -> Tree:
    """REV in a worktree of its own, with its locked dependencies installed."""
    sha = subprocess.run(
        ["git", "rev-parse", "--short", revision],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    root = WORK_DIR / "revisions" / sha
    if not root.exists():
        subprocess.run(
            ["git", "worktree", "add", "--detach", str(root), sha],
            cwd=ROOT,
            check=True,
            capture_output=True,
        )
    # Its own environment, not this one's: uv would otherwise sync the active venv.
    env = {name: value for name, value in os.environ.items() if name != "VIRTUAL_ENV"}
    sync = [*_uv(), "sync", "--all-extras", "--frozen", "--quiet"]
    subprocess.run(sync, cwd=root, env=env, check=True)
    return Tree(root=root, python=str(root / ".venv" / "bin" / "python"))


def _uv() -> list[str]:
    """`uv` where it is on the PATH, else the copy `make install` put beside this python."""
    found = shutil.which("uv")
    return [found] if found else [sys.executable, "-m", "uv"]


def _submitted_ids(base: str) -> list[str]:
    headers = {"Content-Type": "application/json"}
    with httpx.Client(base_url=base, timeout=10) as client:
        return [
            client.post("/api/v1/audits", content=audit_json(), headers=headers).json()["id"]
            for _ in range(READ_IDS)
        ]


def run(run_: Run) -> list[Section]:
    if run_.against is None:
        return []  # only with --against REV
    runs, seconds = (1, 1.0) if run_.quick else (5, 4.0)
    other = checkout(run_.against)
    trees = {"this tree": Tree(), "against": other}
    redis_url = run_.servers.redis_url
    queues = {name: new_queue_name("revisions") for name in TREES}
    with (
        scratch_database(run_.servers, "auditq_bench_this") as this_db,
        scratch_database(
            run_.servers, "auditq_bench_against", root=other.root, python=other.python
        ) as other_db,
        stack() as procs,
    ):
        databases = {"this tree": this_db, "against": other_db}
        apps = [
            (
                name,
                "api.app:create_app",
                "/api/v1/health/live",
                auditq_env(databases[name], redis_url, queues[name], AUTH="none"),
            )
            for name in TREES
        ]
        bases = dict(zip(TREES, start_apis(procs, apps, trees=trees), strict=True))
        servers = dict(zip(TREES, procs.procs[-2:], strict=True))
        ids = {name: _submitted_ids(bases[name]) for name in TREES}
        for name in TREES:  # warm both
            for operation in OPERATIONS:
                api_peak(bases[name], servers[name], operation, ids[name], seconds=1.0)
        loads: dict[tuple[str, str], list[Load]] = {}
        cpu: dict[tuple[str, str], list[float]] = {}
        for index in range(runs):
            for operation in OPERATIONS:
                for name in TREES if index % 2 == 0 else TREES[::-1]:
                    load, cpu_ms = api_peak(
                        bases[name], servers[name], operation, ids[name], seconds=seconds
                    )
                    loads.setdefault((operation, name), []).append(load)
                    cpu.setdefault((operation, name), []).append(cpu_ms)
    for queue in queues.values():
        drop_queue(redis_url, queue)
    return [_section(run_.against, other.root, loads, cpu)]


def _section(
    revision: str,
    root: Path,
    loads: dict[tuple[str, str], list[Load]],
    cpu: dict[tuple[str, str], list[float]],
) -> Section:
    section = Section("revisions", f"10. This tree against {revision}")
    runs = len(loads["submit", "this tree"])
    section.add(
        f"Each tree's API (one uvicorn worker, `AUTH=none`) on its own scratch database, "
        f"32 connections, {runs} alternated runs of each, medians. {revision} ran from a "
        f"worktree at `.auditq/bench/revisions/{root.name}` with its own locked environment.",
        "",
    )
    rows = []
    for operation in OPERATIONS:
        for name in TREES:
            label = "this tree" if name == "this tree" else revision
            rows.append(
                [
                    f"{operation}, {label}",
                    f"{median([load.rps for load in loads[operation, name]]):,.0f}",
                    ", ".join(f"{load.rps:,.0f}" for load in loads[operation, name]),
                    f"{median(cpu[operation, name]):.3f}",
                ]
            )
        ratio = median([load.rps for load in loads[operation, "this tree"]]) / median(
            [load.rps for load in loads[operation, "against"]]
        )
        section.target(
            f"10 {operation} req/s, this tree vs {revision}",
            f"≥ {NO_REGRESSION}x (no regression beyond the noise)",
            f"{ratio:.2f}x",
            ratio >= NO_REGRESSION,
        )
    section.table(["", "req/s (median)", "runs", "server CPU ms/request (median)"], rows)
    return section
