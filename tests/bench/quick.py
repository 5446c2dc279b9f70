"""Run one benchmark with `--quick` in a subprocess, as `make bench` would, and read its figures.

The benchmarks use the suite's servers when it has them (`TEST_DATABASE_URL` /
`TEST_REDIS_URL` become `BENCH_DATABASE_URL` / `BENCH_REDIS_URL`); they create
and drop scratch databases of their own and never flush Redis.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT_S = 180


def run_quick(name: str, results: Path, *options: str) -> list[dict[str, Any]]:
    """The summary rows (figure, target, measured, met) the benchmark wrote."""
    env = dict(os.environ)
    for suite, bench in (
        ("TEST_DATABASE_URL", "BENCH_DATABASE_URL"),
        ("TEST_REDIS_URL", "BENCH_REDIS_URL"),
    ):
        if os.environ.get(suite):
            env[bench] = os.environ[suite]
    argv = [sys.executable, "-m", "bench", name, "--quick", "--results", str(results), *options]
    done = subprocess.run(
        argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT_S
    )
    assert done.returncode == 0, done.stdout + done.stderr
    text = results.read_text()
    section = re.search(rf"<!-- section:{name} -->\n<!-- rows: (.*?) -->", text)
    assert section, text
    rows: list[dict[str, Any]] = json.loads(section.group(1))
    return rows


def numbers(measured: str) -> list[float]:
    return [float(n.replace(",", "")) for n in re.findall(r"\d[\d,]*\.?\d*", measured)]
