"""Hostile clients of the fault suite: result streams in a loop, and bursts of big bodies.

A stream client reads a batch's results again and again, as the probe of issue 8 did,
and checks each read: the batch whole, or cut short with the final error line and then
resumed with `?after=` to the end. A stream that ends short without that line, or whose
connection breaks mid-body, is counted as cut silently: the promise is that there are none.

The stream clients run in a process of their own (`python -m tests.faults.hostile`), as
other machines' clients would: parsing 150 streams in the test's process would slow down
its other clients and inflate the submit latencies it measures. They read each body whole
and split it once: on a 2-core machine, every ms they spend is one the stack does not get.
"""

import argparse
import asyncio
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.processes import ROOT

REQUEST_TIMEOUT_S = 120.0


@dataclass
class StreamReport:
    reads_complete: int = 0
    refused_429: int = 0
    interrupted_then_resumed: int = 0
    cut_silently: list[str] = field(default_factory=list)
    server_errors: Counter[str] = field(default_factory=Counter)
    transport_errors: Counter[str] = field(default_factory=Counter)  # before any byte came

    def figures(self) -> dict[str, Any]:
        return {
            "stream_reads_complete": self.reads_complete,
            "stream_refused_429_too_many_streams": self.refused_429,
            "stream_interrupted_then_resumed": self.interrupted_then_resumed,
            "stream_cut_silently": len(self.cut_silently),
            "stream_cut_silently_how": dict(Counter(self.cut_silently)),
            "stream_5xx": dict(self.server_errors),
            "stream_transport_errors_before_a_byte": dict(self.transport_errors),
        }


async def read_results(
    http: httpx.AsyncClient, path: str, expected_ids: list[str], report: StreamReport
) -> None:
    """Read the whole batch once, waiting out 429s and resuming after an error line."""
    got: list[str] = []
    after: str | None = None
    while True:
        params = {"after": after} if after else {}
        started = False
        try:
            async with http.stream("GET", path, params=params) as response:
                if response.status_code == 429:
                    report.refused_429 += 1
                    await asyncio.sleep(float(response.headers["retry-after"]))
                    continue
                if response.status_code >= 500:
                    report.server_errors[str(response.status_code)] += 1
                    return
                started = True
                lines = (await response.aread()).splitlines()
        except httpx.TransportError as exc:
            if started:
                report.cut_silently.append(f"transport: {type(exc).__name__}")
            else:
                report.transport_errors[type(exc).__name__] += 1
            return
        if lines and not lines[-1].startswith(b'{"id"'):
            report.interrupted_then_resumed += 1
            got += [_id_of(line) for line in lines[:-1]]
            after = json.loads(lines[-1])["after"]
            continue
        got += [_id_of(line) for line in lines]
        if got == expected_ids:
            report.reads_complete += 1
        else:
            report.cut_silently.append(f"short: {len(got)} of {len(expected_ids)} lines")
        return


def _id_of(line: bytes) -> str:
    """A result line's `id`, its first field, without parsing the rest of the line."""
    return line.split(b'"', 4)[3].decode()


async def stream_in_a_loop(
    base_url: str,
    batch_id: str,
    expected_ids: list[str],
    report: StreamReport,
    *,
    clients: int,
    for_s: float,
) -> None:
    """`clients` clients each reading the batch's results again and again for `for_s`."""
    until = time.monotonic() + for_s
    path = f"/batches/{batch_id}/results"
    # One httpx client with a connection per client, as in load.py: 150 httpx clients
    # would build 150 SSL contexts, seconds of CPU.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:

        async def client() -> None:
            while time.monotonic() < until:
                await read_results(http, path, expected_ids, report)

        await asyncio.gather(*(client() for _ in range(clients)))


async def stream_from_another_process(
    base_url: str,
    batch_id: str,
    expected_ids: list[str],
    *,
    clients: int,
    for_s: float,
    work_dir: Path,
) -> dict[str, Any]:
    """`stream_in_a_loop` in a child process; its report's figures."""
    ids_file = work_dir / "expected_ids.json"
    ids_file.write_text(json.dumps(expected_ids))
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "tests.faults.hostile", base_url, batch_id, str(ids_file),
        str(clients), str(for_s), stdout=asyncio.subprocess.PIPE, cwd=ROOT,
    )  # fmt: skip
    out, _ = await child.communicate()
    assert child.returncode == 0, out
    figures: dict[str, Any] = json.loads(out)
    return figures


def _main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("base_url", "batch_id", "ids_file", "clients", "for_s"):
        parser.add_argument(name)
    args = parser.parse_args()
    report = StreamReport()
    expected_ids = json.loads(Path(args.ids_file).read_text())
    run = stream_in_a_loop(
        args.base_url, args.batch_id, expected_ids, report,
        clients=int(args.clients), for_s=float(args.for_s),
    )  # fmt: skip
    asyncio.run(run)
    print(json.dumps(report.figures()))


def big_batch_body(items: int, content_chars: int) -> bytes:
    """A `POST /batches` body of `items` audits of `content_chars` characters each (422)."""
    audit = {
        "subject": "big",
        "content": "a" * content_chars,
        "criteria": [{"id": "c", "description": "d"}],
    }
    return json.dumps({"name": "big", "audits": [audit] * items}).encode()


async def post_concurrently(base_url: str, body: bytes, *, clients: int) -> Counter[str]:
    """`clients` concurrent `POST /batches` of `body`; their statuses (or transport errors)."""
    statuses: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_S, limits=limits
    ) as http:

        async def post() -> None:
            try:
                response = await http.post(
                    "/batches", content=body, headers={"content-type": "application/json"}
                )
                statuses[str(response.status_code)] += 1
            except httpx.TransportError as exc:
                statuses[type(exc).__name__] += 1

        await asyncio.gather(*(post() for _ in range(clients)))
    return statuses


def rss_mb(pid: int) -> dict[str, int]:
    """The process's resident memory now (`rss`) and at its peak so far (`peak`), in MB."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) // 1024
    return {"rss": fields["VmRSS"], "peak": fields["VmHWM"]}


if __name__ == "__main__":
    _main()
