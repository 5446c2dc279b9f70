"""Where the CPU goes: `python -m bench.profile submit|read|worker [--seconds N]`.

Starts the process under test as the benchmarks do, loads it, records it with
py-spy (`uv tool install py-spy`; it is not a dependency) and prints the
functions by share of samples, inclusive, then by own time. The excerpts in
bench/RESULTS.md come from here.
"""

import argparse
import asyncio
import collections
import re
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

from bench import audits
from bench.common import (
    Proc,
    auditq_env,
    drop_queue,
    find_servers,
    new_queue_name,
    peak_load,
    scratch_database,
    stack,
    start_api,
    start_simulator,
    start_worker,
)
from bench.workload import audit_body, audit_json

_LINE = re.compile(r":\d+\)")


def summarize(raw: Path, *, top: int = 40, own: int = 15) -> str:
    """py-spy's raw (collapsed) stacks, as shares of samples per function."""
    inclusive: collections.Counter[str] = collections.Counter()
    own_time: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack_, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue  # py-spy's own notes, not a stack
        samples = int(count)
        frames = [_LINE.sub(")", frame) for frame in stack_.split(";")]
        total += samples
        own_time[frames[-1]] += samples
        for frame in set(frames):
            inclusive[frame] += samples
    lines = [f"{total} samples; inclusive share:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in inclusive.most_common(top)]
    lines += ["own time:"]
    lines += [f"{100 * n / total:5.1f}%  {f}" for f, n in own_time.most_common(own)]
    return "\n".join(lines)


def _record(proc: Proc, seconds: float, load: threading.Thread) -> str:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not on the PATH: `uv tool install py-spy`")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "raw.txt"
        argv = [py_spy, "record", "-p", str(proc.pid), "-d", str(int(seconds)), "-r", "250"]
        recorder = subprocess.Popen(
            [*argv, "-f", "raw", "-o", str(out), "--nonblocking"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        load.start()
        recorder.wait()
        load.join()
        return summarize(out)


def profile_api(kind: str, seconds: float) -> str:
    servers = find_servers()
    queue = new_queue_name("profile")
    with scratch_database(servers, "auditq_bench_profile") as db, stack() as procs:
        base = start_api(procs, auditq_env(db, servers.redis_url, queue))
        api = procs.procs[-1]
        post = {"method": "POST", "body": audit_json()}
        peak_load(base, ["/api/v1/audits"], duration_s=2, **post)  # warm up, and rows to read
        if kind == "submit":
            paths, options = ["/api/v1/audits"], post
        else:
            import httpx

            ids = [httpx.post(base + "/api/v1/audits", json=audit_body()).json()["id"]]
            paths, options = [f"/api/v1/audits/{audit_id}" for audit_id in ids], {}
        load = threading.Thread(
            target=peak_load, args=(base, paths), kwargs={"duration_s": seconds + 1, **options}
        )
        report = _record(api, seconds, load)
    drop_queue(servers.redis_url, queue)
    return report


def profile_worker(seconds: float) -> str:
    servers = find_servers()
    queue = new_queue_name("profile")
    with scratch_database(servers, "auditq_bench_profile") as db, stack() as procs:
        simulator = start_simulator(procs, "500")
        env = auditq_env(
            db, servers.redis_url, queue, OPENAI_BASE_URL=simulator, WORKER_CONCURRENCY="100"
        )
        worker = start_worker(procs, env)

        async def fill() -> None:
            async with audits.client(db, servers.redis_url, queue) as c:
                await audits.submit(c, int(250 * (seconds + 5)))

        asyncio.run(fill())
        report = _record(worker, seconds, threading.Thread(target=lambda: None))
    drop_queue(servers.redis_url, queue)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__)
    parser.add_argument("kind", choices=["submit", "read", "worker"])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    if args.kind == "worker":
        print(profile_worker(args.seconds))
    else:
        print(profile_api(args.kind, args.seconds))


if __name__ == "__main__":
    main()
