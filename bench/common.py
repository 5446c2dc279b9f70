"""The harness every benchmark shares: servers, scratch databases, processes, load, statistics.

- PostgreSQL and Redis: `BENCH_DATABASE_URL` / `BENCH_REDIS_URL` when set, else the
  machine's own on 127.0.0.1 when they answer, else the embedded servers of
  `auditq dev` (`cli/embedded.py`) under `.auditq/bench`.
- Each benchmark creates a scratch database (`alembic upgrade head`, the real
  migrations) and drops it at the end; it uses queue names of its own and deletes
  the Redis keys it created, so it never flushes a database others may use.
- The API, the workers, the simulator and the baselines run as subprocesses
  (`sys.executable`, no wrapper, so /proc figures are theirs); their output goes
  to `.auditq/bench/logs/`. Every process started is stopped on the way out.
"""

import asyncio
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast
from uuid import uuid4

import asyncpg
import httpx
import redis
from sqlalchemy.engine import make_url

from cli.dev import free_port
from shared.db import asyncpg_dsn

ROOT = Path(__file__).resolve().parents[1]
WORK_DIR = ROOT / ".auditq" / "bench"
LOG_DIR = WORK_DIR / "logs"
DEFAULT_DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/13"
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --- servers and scratch databases -------------------------------------------------------


@dataclass(frozen=True)
class Servers:
    """Where the benchmarks run: a PostgreSQL server (admin URL) and a Redis database."""

    database_url: str
    redis_url: str
    origin: str


def _answers_postgres(url: str) -> bool:
    async def probe() -> None:
        connection = await asyncpg.connect(asyncpg_dsn(url), timeout=2)
        await connection.close()

    try:
        asyncio.run(probe())
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return False
    return True


def _answers_redis(url: str) -> bool:
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def find_servers() -> Servers:
    database_url = os.environ.get("BENCH_DATABASE_URL") or DEFAULT_DATABASE_URL
    redis_url = os.environ.get("BENCH_REDIS_URL") or DEFAULT_REDIS_URL
    if _answers_postgres(database_url) and _answers_redis(redis_url):
        origin = "BENCH_*_URL" if os.environ.get("BENCH_DATABASE_URL") else "local services"
        return Servers(database_url, redis_url, origin)
    from cli.embedded import EmbeddedServices

    urls = EmbeddedServices(WORK_DIR / "embedded").start()
    admin = make_url(urls.database_url).set(database="postgres")
    return Servers(admin.render_as_string(hide_password=False), urls.redis_url, "embedded")


def sqlalchemy_url(url: str) -> str:
    """The same database as `DATABASE_URL` wants it (asyncpg driver)."""
    return make_url(url).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)


async def _admin(server_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def migrate(database_url: str, *, root: Path = ROOT, python: str = sys.executable) -> None:
    """`alembic upgrade head` of the tree at `root` (another revision's, with its python)."""
    subprocess.run(
        [python, "-m", "alembic", "upgrade", "head"],
        cwd=root,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


@contextmanager
def scratch_database(
    servers: Servers, prefix: str, *, root: Path = ROOT, python: str = sys.executable
) -> Iterator[str]:
    """A new database on the server, migrated by the tree at `root`; its URL (asyncpg
    form). Dropped afterwards.

    Its name ends with this process's id: runs side by side (a `make test` during a
    `make bench`) do not drop each other's databases.
    """
    name = f"{prefix}_{os.getpid()}"
    url = sqlalchemy_url(
        make_url(servers.database_url).set(database=name).render_as_string(hide_password=False)
    )
    drop = f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    asyncio.run(_admin(servers.database_url, drop, f"CREATE DATABASE {name}"))
    migrate(url, root=root, python=python)
    try:
        yield url
    finally:
        asyncio.run(_admin(servers.database_url, drop))


async def member_keys(database_url: str, tenants: Sequence[str]) -> dict[str, str]:
    """A member key per tenant, made as `auditq key create` makes it."""
    from shared.db import in_transaction
    from shared.tenants import service
    from shared.tenants.caller import Role

    async def make(conn: Any) -> dict[str, str]:
        made = {}
        for tenant in tenants:
            key = await service.create_key(conn, tenant=tenant, label="bench", role=Role.MEMBER)
            made[tenant] = key.secret
        return made

    return await in_transaction(database_url, make)


def celery_broker_url(redis_url: str) -> str:
    """`REDIS_URL` as kombu spells it (`unix://` is `redis+socket://` there)."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


_QUEUES: list[str] = []


def new_queue_name(prefix: str) -> str:
    """A queue of this run's own; `drop_all_queues` deletes what is left of it at the end."""
    name = f"bench:{prefix}:{uuid4().hex[:8]}"
    _QUEUES.append(name)
    return name


def drop_all_queues(redis_url: str) -> None:
    """Every queue of this run, and keys named after it (jobs, results, Celery bindings).

    Each benchmark drops its queues when it ends; this catches what one that failed left.
    """
    while _QUEUES:
        queue = _QUEUES.pop()
        prefixes = [queue, f"arq:job:{queue}", f"arq:result:{queue}", f"_kombu.binding.{queue}"]
        drop_queue(redis_url, queue, job_prefixes=prefixes)


def drop_queue(redis_url: str, queue_name: str, *, job_prefixes: Sequence[str] = ()) -> None:
    """Delete a queue, its fair queue (shared/fair_queue.py) and the arq keys of the jobs
    still in them (or named by `job_prefixes`)."""
    client = redis.Redis.from_url(redis_url)
    try:
        # redis-py types every reply of its client as `Awaitable | Any`, sync or not.
        ids = [i.decode() for i in cast(list[bytes], client.zrange(queue_name, 0, -1))]
        fair = [k.decode() for k in client.scan_iter(f"{queue_name}:fair:*", count=1000)]
        for key in fair:
            if key.startswith(f"{queue_name}:fair:jobs:"):
                ids += [i.decode() for i in cast(list[bytes], client.lrange(key, 0, -1))]
        keys = [queue_name, f"{queue_name}:health-check", *fair]
        for job_id in ids:
            keys += [f"arq:job:{job_id}", f"arq:in-progress:{job_id}", f"arq:retry:{job_id}"]
        for prefix in job_prefixes:
            keys += [k.decode() for k in client.scan_iter(f"{prefix}*", count=1000)]
        for start in range(0, len(keys), 1000):
            client.delete(*keys[start : start + 1000])
        if ids:
            client.zrem("arq:abort", *ids)
    finally:
        client.close()


# --- processes ------------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process (and its reaped children)."""
        return cpu_seconds(self.pid)

    def peak_rss_mb(self) -> float:
        return status_kb(self.pid, "VmHWM") / 1024

    def tree_rss_mb(self) -> float:
        """Resident memory of the process and all its descendants (prefork pools)."""
        import psutil

        process = psutil.Process(self.pid)
        members = [process, *process.children(recursive=True)]
        return sum(p.memory_info().rss for p in members) / 2**20

    def tree_pids(self) -> list[int]:
        import psutil

        return [self.pid, *(p.pid for p in psutil.Process(self.pid).children(recursive=True))]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


@dataclass
class Stack:
    """The processes a benchmark started; `stop_all` ends them (process groups), last first."""

    procs: list[Proc] = field(default_factory=list)

    def start(
        self,
        name: str,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        ready: Callable[[], bool] | None = None,
        timeout_s: float = 60.0,
        cwd: Path = ROOT,
    ) -> Proc:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        log = LOG_DIR / f"{name}.log"
        with log.open("wb") as out:
            popen = subprocess.Popen(
                list(argv),
                cwd=cwd,
                env={**os.environ, **(env or {})},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self.procs.append(proc)
        if ready is not None:
            self.wait_ready(proc, ready, timeout_s)
        return proc

    def wait_ready(self, proc: Proc, ready: Callable[[], bool], timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while not ready():
            if proc.popen.poll() is not None:
                raise RuntimeError(f"{proc.name} exited: see {proc.log}\n{_tail(proc.log)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{proc.name} not ready after {timeout_s} s: see {proc.log}")
            time.sleep(0.05)

    def stop(self, proc: Proc, *, timeout_s: float = 15.0) -> None:
        if proc.popen.poll() is None:
            _signal_group(proc.popen.pid, signal.SIGTERM)
            try:
                proc.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.popen.pid, signal.SIGKILL)
                proc.popen.wait(timeout_s)
        # children of a prefork pool may outlive their parent for a moment
        _signal_group(proc.popen.pid, signal.SIGKILL)
        if proc in self.procs:
            self.procs.remove(proc)

    def stop_all(self) -> None:
        for proc in reversed(list(self.procs)):
            self.stop(proc)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@contextmanager
def stack() -> Iterator[Stack]:
    started = Stack()
    try:
        yield started
    finally:
        started.stop_all()


def http_ok(url: str) -> Callable[[], bool]:
    def probe() -> bool:
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    return probe


def redis_key_exists(redis_url: str, key: str) -> Callable[[], bool]:
    def probe() -> bool:
        client = redis.Redis.from_url(redis_url)
        try:
            return bool(client.exists(key))
        finally:
            client.close()

    return probe


# --- the auditq stack ---------------------------------------------------------------------


# The API's SECRET_KEY, so that a benchmark can build the cursors it would hand out.
SECRET_KEY = "bench-secret-key-not-for-production"


def auditq_env(database_url: str, redis_url: str, queue_name: str, **extra: str) -> dict[str, str]:
    """The environment of an auditq process, as a deployment would set it."""
    return {
        "SECRET_KEY": SECRET_KEY,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "QUEUE_NAME": queue_name,
        "OPENAI_API_KEY": "sk-bench-simulator",
        "LOG_LEVEL": "INFO",
        **extra,
    }


def start_api(
    stack_: Stack,
    env: dict[str, str],
    *,
    name: str = "api",
    app: str = "api.app:create_app",
    health: str = "/api/v1/health/live",
) -> str:
    """uvicorn, one worker process, as the Procfile's `web`; returns its base URL."""
    return start_apis(stack_, [(name, app, health, env)])[0]


@dataclass(frozen=True)
class Tree:
    """Source to run: this tree, or another revision's worktree with its own python."""

    root: Path = ROOT
    python: str = sys.executable


THIS_TREE = Tree()


def start_apis(
    stack_: Stack,
    apps: Sequence[tuple[str, str, str, dict[str, str]]],
    *,
    trees: Mapping[str, Tree] | None = None,
) -> list[str]:
    """Several apps at once, `(name, factory, health path, env)` each, each from its tree
    (`trees` by name; this one by default); their base URLs."""
    started: list[tuple[Proc, str, str]] = []
    for name, app, health, env in apps:
        tree = (trees or {}).get(name, THIS_TREE)
        port = free_port()
        argv = [tree.python, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--workers", "1", "--no-access-log", "--log-level", "warning"]
        base = f"http://127.0.0.1:{port}"
        started.append((stack_.start(name, argv, env=env, cwd=tree.root), base, health))
    for proc, base, health in started:
        stack_.wait_ready(proc, http_ok(base + health))
    return [base for _, base, _ in started]


def start_simulator(stack_: Stack, latency_ms: str, *, seed: int = 7) -> str:
    """`auditq simulator`, no faults; returns the `OPENAI_BASE_URL` to give the workers."""
    port = free_port()
    argv = [sys.executable, "-m", "cli.main", "simulator", "--port", str(port)]
    argv += ["--latency-ms", latency_ms, "--fault-rate", "0", "--seed", str(seed)]
    stack_.start(f"simulator-{port}", argv, ready=http_ok(f"http://127.0.0.1:{port}/health"))
    return f"http://127.0.0.1:{port}/v1"


def procfile_worker(python: str = sys.executable) -> list[str]:
    """The Procfile's `worker` command, run with this interpreter (or `python`)."""
    for line in (ROOT / "Procfile").read_text().splitlines():
        if line.startswith("worker:"):
            program, *args = shlex.split(line.removeprefix("worker:"))
            if program in ("python", "python3"):
                return [python, *args]
            return [python, "-m", program, *args]
    raise RuntimeError("the Procfile has no `worker` process")


def start_worker(
    stack_: Stack,
    env: dict[str, str],
    *,
    name: str = "worker",
    settings: str | None = None,
    tree: Tree = THIS_TREE,
) -> Proc:
    """The Procfile's `worker` (or `arq <settings>`) of `tree`; ready once it polls its queue."""
    program = [tree.python, "-m", "arq", settings] if settings else procfile_worker(tree.python)
    key = f"{env['QUEUE_NAME']}:health-check"
    ready = redis_key_exists(env["REDIS_URL"], key)
    return stack_.start(name, program, env=env, ready=ready, cwd=tree.root)


# --- load -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    """What a load run measured."""

    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    errors: int
    tool: str

    def __post_init__(self) -> None:
        if self.requests and self.errors > self.requests * 0.001:
            raise RuntimeError(f"{self.errors} of {self.requests} requests failed ({self.tool})")


def have_wrk() -> bool:
    """wrk is used when installed, unless BENCH_LOADGEN=python."""
    return os.environ.get("BENCH_LOADGEN") != "python" and shutil.which("wrk") is not None


_WRK_DONE = """
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nRESULT {"requests": %d, "duration_us": %d, "errors": %d, "status_errors": %d, '
    .. '"p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def _wrk_script(
    method: str, paths: Sequence[str], body: str | None, headers: Mapping[str, str]
) -> str:
    lines = [f'wrk.method = "{method}"']
    if body is not None:
        lines += [
            f"wrk.body = {json.dumps(body)}",
            'wrk.headers["Content-Type"] = "application/json"',
        ]
    lines += [f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items()]
    lines.append("paths = {" + ", ".join(json.dumps(p) for p in paths) + "}")
    lines.append("request = function() return wrk.format(nil, paths[math.random(#paths)]) end")
    return "\n".join(lines) + _WRK_DONE


def run_wrk(
    base: str,
    paths: Sequence[str],
    *,
    method: str = "GET",
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    connections: int = 32,
    duration_s: float = 5.0,
) -> Load:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_wrk_script(method, paths, body, headers or {}))
    try:
        argv = [
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{max(1, round(duration_s))}s",
            "-s",
            script.name,
            base,
        ]
        out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(script.name)
    data = json.loads(out.split("RESULT", 1)[1])
    seconds = data["duration_us"] / 1e6
    errors = data["errors"] + data["status_errors"]
    return Load(
        rps=(data["requests"] - errors) / seconds,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        requests=data["requests"],
        errors=errors,
        tool="wrk",
    )


def run_loadgen(
    base: str,
    paths: Sequence[str],
    *,
    method: str = "GET",
    body: str | None = None,
    headers: Mapping[str, str] | None = None,
    connections: int = 32,
    duration_s: float = 5.0,
    rate: float | None = None,
    warmup_s: float = 0.0,
    random_paths: bool = True,
) -> Load:
    """`bench.loadgen` in a process of its own (closed loop, or open loop at `rate`)."""
    spec = {
        "url": base,
        "paths": list(paths),
        "method": method,
        "body": body,
        "headers": dict(headers or {}),
        "connections": connections,
        "duration_s": duration_s,
        "rate": rate,
        "random_paths": random_paths,
        "warmup_s": warmup_s,
    }
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(spec, file)
    try:
        argv = [sys.executable, "-m", "bench.loadgen", file.name]
        out = subprocess.run(argv, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    finally:
        os.unlink(file.name)
    data = json.loads(out)
    return Load(
        rps=data["rps"],
        p50_ms=data["latency_ms"]["p50"],
        p99_ms=data["latency_ms"]["p99"],
        requests=data["requests"],
        errors=data["errors"],
        tool="bench.loadgen" + (f" at {rate:g}/s" if rate else ""),
    )


def peak_load(base: str, paths: Sequence[str], **options: Any) -> Load:
    """Closed-loop peak: wrk when installed (cheapest on the shared CPUs), else bench.loadgen."""
    if have_wrk():
        return run_wrk(base, paths, **options)
    return run_loadgen(base, paths, **options)


# --- statistics -----------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def steady_rate(finish_times: Sequence[float], *, trim: float = 0.1) -> float:
    """Completions per second in the steady middle of a run.

    The least-squares slope of the cumulative count against time over the middle
    (1 - 2·trim) of the completions: ramp-up and drain are cut off, and waves
    (jobs started together finish together) do not bias it the way a count
    between two arbitrary instants does.
    """
    times = sorted(finish_times)
    lo, hi = int(len(times) * trim), int(len(times) * (1 - trim))
    xs = times[lo:hi]
    if len(xs) < 2 or xs[-1] == xs[0]:
        raise ValueError("too few completions to measure a rate")
    ys = list(range(lo, hi))
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    cov = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True))
    var = sum((x - mean_x) ** 2 for x in xs)
    return cov / var


# --- Redis ----------------------------------------------------------------------------------


def redis_command_count(redis_url: str) -> int:
    """Commands the Redis server has run since its start (all clients, INFO commandstats)."""
    client = redis.Redis.from_url(redis_url)
    try:
        stats = cast(dict[str, dict[str, Any]], client.info("commandstats"))
    finally:
        client.close()
    return sum(int(entry["calls"]) for entry in stats.values())


# --- one invocation -------------------------------------------------------------------------


@dataclass
class Run:
    """What the benchmarks of one `python -m bench` share."""

    servers: Servers
    quick: bool
    # `--against REV`: the revision `revisions` compares this tree with
    against: str | None = None
    # figures one benchmark hands to a later one (e.g. worker throughput to `polling`)
    figures: dict[str, float] = field(default_factory=dict)


def server_versions(run: Run) -> list[str]:
    async def postgres() -> str:
        connection = await asyncpg.connect(asyncpg_dsn(run.servers.database_url))
        try:
            version = await connection.fetchval("SHOW server_version")
            settings = [
                f"{name}={await connection.fetchval(f'SHOW {name}')}"
                for name in ("fsync", "synchronous_commit", "shared_buffers", "max_connections")
            ]
        finally:
            await connection.close()
        return f"PostgreSQL {version} ({', '.join(settings)})"

    client = redis.Redis.from_url(run.servers.redis_url)
    try:
        redis_version = cast(dict[str, Any], client.info("server"))["redis_version"]
    finally:
        client.close()
    return [
        f"- {asyncio.run(postgres())}; Redis {redis_version}; servers: {run.servers.origin}",
        f"- load generator: {'wrk (1 thread)' if have_wrk() else 'bench.loadgen'} for peaks, "
        "bench.loadgen for fixed rates and polling; each in a process of its own",
    ]
