"""`python -m bench [NAME ...] [--quick] [--results PATH]`: run benchmarks, write RESULTS.md."""

import argparse
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

from bench import (
    auth,
    batch,
    capacity,
    fairness,
    metrics,
    model_call,
    peer,
    polling,
    reads,
    revisions,
    samples,
    submit,
    webhooks,
    worker,
)
from bench.common import Run, drop_all_queues, find_servers, server_versions
from bench.results import RESULTS, Section, write

BENCHMARKS: dict[str, Callable[[Run], list[Section]]] = {
    "submit": submit.run,
    "batch": batch.run,
    "worker": worker.run,
    "peer": peer.run,
    "reads": reads.run,
    "polling": polling.run,
    "model-call": model_call.run,
    "auth": auth.run,
    "revisions": revisions.run,  # only with --against REV
    "fairness": fairness.run,
    "capacity": capacity.run,  # only when named: it starts servers of its own
    "samples": samples.run,
    "webhooks": webhooks.run,
    "metrics": metrics.run,
}
# Run only when named: not part of `make bench`'s run of them all.
ON_DEMAND = {"capacity"}


def _timed(name: str, run: Run) -> list[Section]:
    """Run one benchmark; its sections say how long it took and how loaded the machine was."""
    print(f"bench: {name}…", flush=True)
    begun, load = time.monotonic(), os.getloadavg()[0]
    sections = BENCHMARKS[name](run)
    took = time.monotonic() - begun
    print(f"bench: {name} done in {took:.0f} s", flush=True)
    for section in sections:
        section.add(
            f"_{took:.0f} s; load average (1 min) {load:.1f} before, "
            f"{os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores._",
            "",
        )
    return sections


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("names", nargs="*", choices=[*BENCHMARKS, []], metavar="NAME")
    parser.add_argument("--quick", action="store_true", help="tiny inputs: checks it runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="file to write")
    parser.add_argument(
        "--against", metavar="REV", help="`revisions`: the git revision to compare with"
    )
    args = parser.parse_args(argv)
    names = args.names or [name for name in BENCHMARKS if name not in ON_DEMAND]
    servers = find_servers()
    run = Run(servers=servers, quick=args.quick, against=args.against)
    command = "python -m bench " + shlex.join(sys.argv[1:] if argv is None else argv)
    started = time.monotonic()
    try:
        for name in names:
            sections = _timed(name, run)
            write(args.results, sections, command=command.strip(), environment=server_versions(run))
    finally:
        drop_all_queues(servers.redis_url)
    print(f"bench: all done in {time.monotonic() - started:.0f} s; see {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
