"""Figure 2: a 1,000-audit `POST /api/v1/batches`, accepted (validated, inserted, queued) in time.

The API runs under uvicorn with no worker draining its queue; a client in this
process posts the same 1 MB batch (1,000 audits of 1 KB) several times, one at a
time, and times each request until its 202.
"""

import json
import time

import httpx

from bench.common import (
    Run,
    auditq_env,
    drop_queue,
    median,
    new_queue_name,
    scratch_database,
    stack,
    start_api,
)
from bench.loadgen import percentile
from bench.results import Section
from bench.workload import batch_body

TARGET_S = 0.5


def run(run_: Run) -> list[Section]:
    size, runs = (50, 3) if run_.quick else (1000, 9)
    body = json.dumps(batch_body(size), separators=(",", ":")).encode()
    queue = new_queue_name("batch")
    with scratch_database(run_.servers, "auditq_bench_batch") as db, stack() as procs:
        base = start_api(procs, auditq_env(db, run_.servers.redis_url, queue))
        api = procs.procs[-1]
        timings: list[float] = []
        cpu: list[float] = []
        with httpx.Client(base_url=base, timeout=60) as client:
            headers = {"content-type": "application/json"}
            for index in range(runs + 1):  # the first one warms the app up
                before_cpu = api.cpu_s()
                started = time.perf_counter()
                response = client.post("/api/v1/batches", content=body, headers=headers)
                elapsed = time.perf_counter() - started
                response.raise_for_status()
                if response.json()["counts"]["total"] != size:
                    raise RuntimeError(f"batch accepted {response.json()['counts']}")
                if index:
                    timings.append(elapsed)
                    cpu.append(api.cpu_s() - before_cpu)
    drop_queue(run_.servers.redis_url, queue)
    return [_section(size, len(body), timings, cpu)]


def _section(size: int, body_bytes: int, timings: list[float], cpu: list[float]) -> Section:
    typical = median(timings)
    section = Section("batch", "2. Batch ingest: POST /api/v1/batches")
    section.add(
        f"{size:,} audits of 1 KB in one request ({body_bytes / 2**20:.2f} MiB), "
        f"{len(timings)} requests one after the other after a warm-up, timed by the client "
        "until the 202: validation of every item, one multi-row `INSERT`, the commit, "
        "one Redis command (a script) for all the jobs.",
        "",
    )
    section.table(
        ["median", "p90", "max", "audits/s (median)", "API CPU per batch (median)"],
        [
            [
                f"{typical * 1000:.0f} ms",
                f"{percentile(timings, 90) * 1000:.0f} ms",
                f"{max(timings) * 1000:.0f} ms",
                f"{size / typical:,.0f}",
                f"{median(cpu) * 1000:.0f} ms",
            ]
        ],
    )
    met = typical < TARGET_S if size >= 1000 else None
    section.target(
        f"2 batch of {size:,} accepted (median)",
        f"< {TARGET_S} s" if size >= 1000 else "(quick run)",
        f"{typical:.3f} s ({size / typical:,.0f} audits/s)",
        met,
    )
    return section
