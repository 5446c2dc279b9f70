"""A lean HTTP/1.1 load generator, run as its own process: `python -m bench.loadgen SPEC.json`.

It exists beside wrk for what wrk cannot do (a fixed request rate, many
clients each polling its own URL) and for machines without wrk. Keep-alive
connections over raw asyncio streams (uvloop when installed), no HTTP library:
its own CPU cost per request stays far below the servers' it measures, and
`bench` reports its ceiling against a trivial endpoint.

Modes (SPEC is JSON, the result is one JSON line on stdout):
- closed loop: `connections` clients each send a request as soon as the last
  one answered, for `duration_s`;
- open loop (`rate` set): requests are due at a fixed rate and each is timed
  from when it was due, not from when a connection was free, so a slow server
  cannot hide its queueing (no coordinated omission).

Requests cycle through `paths` (or pick at random with `random_paths`); every
request carries `body` when one is given.
"""

import asyncio
import json
import random
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit


@dataclass
class Spec:
    url: str
    paths: list[str]
    method: str = "GET"
    body: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    connections: int = 16
    duration_s: float = 5.0
    rate: float | None = None
    random_paths: bool = False
    warmup_s: float = 0.0


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


class Connection:
    """One keep-alive HTTP/1.1 connection."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            elif name.lower() == b"connection" and value.strip().lower() == b"close":
                self.close()
        if length and self.reader is not None:
            await self.reader.readexactly(length)
        return status

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _requests(spec: Spec) -> list[bytes]:
    parts = urlsplit(spec.url)
    body = spec.body.encode() if spec.body is not None else b""
    headers = f"Host: {parts.netloc}\r\nConnection: keep-alive\r\n"
    if spec.body is not None:
        headers += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
    headers += "".join(f"{name}: {value}\r\n" for name, value in spec.headers.items())
    return [
        f"{spec.method} {path} HTTP/1.1\r\n{headers}\r\n".encode() + body for path in spec.paths
    ]


class Paths:
    def __init__(self, raws: list[bytes], *, randomly: bool) -> None:
        self.raws, self.randomly, self.next = raws, randomly, 0

    def pick(self) -> bytes:
        if self.randomly:
            return random.choice(self.raws)
        raw = self.raws[self.next % len(self.raws)]
        self.next += 1
        return raw


async def _send(conn: Connection, raw: bytes, due: float, tally: Tally, record: bool) -> None:
    try:
        status = await conn.request(raw)
    except (OSError, asyncio.IncompleteReadError, ValueError):
        conn.close()
        if record:
            tally.errors += 1
        return
    if record:
        tally.latencies.append(time.perf_counter() - due)
        tally.statuses[status] = tally.statuses.get(status, 0) + 1


async def _closed_loop(spec: Spec, paths: Paths, tally: Tally, host: str, port: int) -> float:
    start = time.perf_counter()
    measure_from = start + spec.warmup_s
    stop = measure_from + spec.duration_s

    async def client() -> None:
        conn = Connection(host, port)
        while (now := time.perf_counter()) < stop:
            await _send(conn, paths.pick(), now, tally, record=now >= measure_from)
        conn.close()

    await asyncio.gather(*(client() for _ in range(spec.connections)))
    return spec.duration_s


async def _open_loop(spec: Spec, paths: Paths, tally: Tally, host: str, port: int) -> float:
    assert spec.rate is not None
    idle: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(spec.connections):
        idle.put_nowait(Connection(host, port))
    interval = 1.0 / spec.rate
    start = time.perf_counter()
    measure_from = start + spec.warmup_s
    total = int((spec.warmup_s + spec.duration_s) * spec.rate)
    pending: set[asyncio.Task[None]] = set()

    async def one(due: float) -> None:
        conn = await idle.get()
        try:
            await _send(conn, paths.pick(), due, tally, record=due >= measure_from)
        finally:
            idle.put_nowait(conn)

    for n in range(total):
        due = start + n * interval
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(due))
        pending.add(task)
        task.add_done_callback(pending.discard)
    if pending:
        await asyncio.wait(pending)
    return spec.duration_s


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile `q` (0-100); NaN when there is no value."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def summarize(tally: Tally, duration_s: float) -> dict[str, Any]:
    latencies = sorted(tally.latencies)
    ok = sum(n for status, n in tally.statuses.items() if 200 <= status < 400)
    return {
        "requests": len(latencies),
        "ok": ok,
        "errors": tally.errors + len(latencies) - ok,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "duration_s": duration_s,
        "rps": ok / duration_s,
        "latency_ms": {
            "p50": percentile(latencies, 50) * 1000,
            "p90": percentile(latencies, 90) * 1000,
            "p99": percentile(latencies, 99) * 1000,
            "max": (latencies[-1] if latencies else float("nan")) * 1000,
        },
    }


async def run(spec: Spec) -> dict[str, Any]:
    parts = urlsplit(spec.url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    paths = Paths(_requests(spec), randomly=spec.random_paths)
    tally = Tally()
    loop = _open_loop if spec.rate else _closed_loop
    duration = await loop(spec, paths, tally, host, port)
    return summarize(tally, duration)


def main() -> None:
    with open(sys.argv[1]) as file:
        spec = Spec(**json.load(file))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(spec))
    else:
        result = uvloop.run(run(spec))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
