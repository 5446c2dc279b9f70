"""`auditq dev` and `auditq migrate`: the whole stack on one machine, with no set-up.

Where `DATABASE_URL` / `REDIS_URL` are unset (in the environment and in `.env`),
the embedded PostgreSQL and Redis are started under `.auditq/`; where
`OPENAI_API_KEY` is unset, the bundled simulator stands in for the model; where
`SECRET_KEY` is unset, one is made once and kept in `.auditq/secret_key`.
"""

import importlib.util
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.panel import Panel
from rich.text import Text

if TYPE_CHECKING:
    from cli.embedded import EmbeddedServer

PROJECT_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_ROOT = Path(".auditq")
SIMULATOR_API_KEY = "sk-auditq-simulator"
# Where the openai SDK goes without OPENAI_BASE_URL.
OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"

_READY_TIMEOUT_S = 60.0
_STOP_TIMEOUT_S = 30.0  # the worker gives running audits 25 s to finish on SIGTERM
_COLOURS = ("cyan", "magenta", "green", "blue", "yellow")

console = Console(highlight=False)


class StopRequested(Exception):
    """SIGINT or SIGTERM arrived: stop everything and exit 0."""


class ChildExited(Exception):
    """A process of the stack died (or never became ready): stop the rest, exit non-zero."""


class DevError(Exception):
    """The stack cannot be started as asked."""


@dataclass(frozen=True)
class SimulatorOptions:
    """What `auditq simulator` is started with (its own options, without `--host`/`--port`)."""

    latency_ms: str = "0"
    fault_rate: float = 0.0
    faults: str | None = None

    def args(self) -> list[str]:
        args = [f"--latency-ms={self.latency_ms}", f"--fault-rate={self.fault_rate}"]
        return [*args, f"--faults={self.faults}"] if self.faults is not None else args


@dataclass(frozen=True)
class DevOptions:
    api_only: bool
    host: str
    port: int
    workers: int
    simulator: SimulatorOptions = SimulatorOptions()


def command(
    api_only: Annotated[
        bool, typer.Option("--api-only", help="Start the API alone: no worker, no simulator.")
    ] = False,
    host: Annotated[str, typer.Option(help="Interface the API listens on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port the API listens on.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Number of arq worker processes.")] = 1,
    simulator_latency_ms: Annotated[
        str,
        typer.Option(
            help="The simulator's delay per answer, ms: '500', or a range '200..2000'.",
            rich_help_panel="Simulator (without OPENAI_API_KEY)",
        ),
    ] = "0",
    simulator_fault_rate: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Share of the simulator's answers that are faults (429, 500, hang, ...).",
            rich_help_panel="Simulator (without OPENAI_API_KEY)",
        ),
    ] = 0.0,
    simulator_faults: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated fault kinds to draw from (see `auditq simulator --help`).",
            rich_help_panel="Simulator (without OPENAI_API_KEY)",
        ),
    ] = None,
) -> None:
    """Run the API, a worker and, without OPENAI_API_KEY, the model simulator."""
    simulator = SimulatorOptions(simulator_latency_ms, simulator_fault_rate, simulator_faults)
    _check_simulator_options(simulator)
    options = DevOptions(api_only, host, port, workers, simulator)
    raise typer.Exit(run_dev(options))


def _check_simulator_options(options: SimulatorOptions) -> None:
    """Refuse a bad value now, not after the services have started."""
    from cli.simulator_command import parse_fault_kinds, parse_latency

    checks: list[tuple[Callable[[str], object], str, str]] = [
        (parse_latency, options.latency_ms, "--simulator-latency-ms")
    ]
    if options.faults is not None:
        checks.append((parse_fault_kinds, options.faults, "--simulator-faults"))
    for parse, value, option in checks:
        try:
            parse(value)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint=option) from None


def migrate_command() -> None:
    """Apply the migrations; on the embedded PostgreSQL when DATABASE_URL is unset."""
    raise typer.Exit(run_migrate())


def run_dev(options: DevOptions) -> int:
    """Run the stack until a signal (exit 0) or until one of its processes dies (exit 1)."""
    with _reported_failures() as failed, _stop_on_signals() as stack:
        _check_port_free(options)
        env = _environment()
        env["SECRET_KEY"] = env.get("SECRET_KEY") or kept_secret_key(EMBEDDED_ROOT)
        env.update(_embedded_urls(stack, env, redis=True))
        _migrate(env)
        _run_stack(stack.enter_context(Supervisor()), env, options)
    return 1 if failed else 0


def _check_port_free(options: DevOptions) -> None:
    """Before anything starts: a port in use would only show once every service is up."""
    if _accepts_connections(_reachable(options.host), options.port):
        raise DevError(
            f"port {options.port} is in use: stop what listens there, or choose another port"
            f" (auditq dev --port {options.port + 1}, or make run ARGS='--port {options.port + 1}')"
        )


def run_migrate() -> int:
    """`alembic upgrade head`; an embedded server stops after it unless a process uses it."""
    with _reported_failures() as failed, _stop_on_signals() as stack:
        env = _environment()
        env.update(_embedded_urls(stack, env, redis=False))
        _migrate(env)
    return 1 if failed else 0


@contextmanager
def ops_database() -> Iterator[str]:
    """The database of an ops command: `DATABASE_URL` (or `.env`'s), else the embedded
    PostgreSQL, started for the command and stopped after it unless a process uses it."""
    env = _environment()
    if env.get("DATABASE_URL"):
        yield env["DATABASE_URL"]
        return
    # Signals stop the embedded server cleanly; nothing else here needs them.
    with _stop_on_signals() as stack:
        env.update(_embedded_urls(stack, env, redis=False))
        yield env["DATABASE_URL"]


def _run_stack(supervisor: "Supervisor", env: dict[str, str], options: DevOptions) -> None:
    _require_module("api.app", "the API (api/app.py) does not exist yet")
    if not options.api_only:
        _require_module("worker.settings", "worker/settings.py does not exist yet: use --api-only")
    _check_port_free(options)  # again: the migrations took a while
    if not env.get("OPENAI_API_KEY") and not options.api_only:
        env.update(_start_simulator(supervisor, env, options.simulator))
    api = supervisor.spawn("api", _uvicorn_args(options), {**env, "PORT": str(options.port)})
    if not options.api_only:
        for number in range(1, options.workers + 1):
            supervisor.spawn(f"worker.{number}", _module_args("worker"), _worker_env(env, number))
    supervisor.wait_for_port(api, _reachable(options.host), options.port)
    _print_ready(options, env)
    supervisor.watch()


def _worker_env(env: Mapping[str, str], number: int) -> dict[str, str]:
    """Worker `number`'s environment: with METRICS_PORT set, its port is that one plus
    `number - 1`, so worker.1 serves on METRICS_PORT, worker.2 on the next, … A worker
    that finds its port taken tries the next ones up itself (worker/metrics.py)."""
    first_port = env.get("METRICS_PORT")
    if not first_port or not first_port.isdigit():
        return dict(env)  # unset: off; anything else the worker's settings refuse
    return {**env, "METRICS_PORT": str(int(first_port) + number - 1)}


def _uvicorn_args(options: DevOptions) -> list[str]:
    address = ["--host", options.host, "--port", str(options.port)]
    # The Procfile's `web` command: the HTTP protocol with read deadlines (api/protocol.py).
    http = ["--http", "api.protocol:HttpWithDeadlines"]
    # One process whatever WEB_CONCURRENCY says (uvicorn reads it): `python -m api` is
    # what shares metrics and the cursor key between several.
    single = ["--workers", "1"]
    return _module_args("uvicorn", "api.app:create_app", "--factory", *http, *single, *address)


def _module_args(module: str, *args: str) -> list[str]:
    return [sys.executable, "-m", module, *args]


def _environment() -> dict[str, str]:
    """The children's environment: this one, with `.env` filling what it leaves unset."""
    from dotenv import dotenv_values

    env = dict(os.environ)
    for name, value in dotenv_values(".env").items():
        if value and not env.get(name):
            env[name] = value
    env["PYTHONUNBUFFERED"] = "1"
    if not env.get("LOG_FORMAT") and sys.stdout.isatty():
        # The children write into a pipe, where `auto` means JSON; their lines end up here.
        env["LOG_FORMAT"] = "console"
    return env


def kept_secret_key(root: Path) -> str:
    """The stack's SECRET_KEY: made once, kept in `<root>/secret_key`, readable by its owner.

    Kept rather than made per run, so that cursors a client holds survive a restart.
    """
    path = root / "secret_key"
    if not path.exists():
        root.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


def _embedded_urls(stack: ExitStack, env: Mapping[str, str], *, redis: bool) -> dict[str, str]:
    """Start the embedded servers the environment does not replace; return their URLs.

    They are stopped on the way out, unless another process (a second
    `auditq dev`, say) still uses them.
    """
    wanted = {"DATABASE_URL": not env.get("DATABASE_URL")}
    wanted["REDIS_URL"] = redis and not env.get("REDIS_URL")
    if not any(wanted.values()):
        return {}
    servers = _embedded_servers(EMBEDDED_ROOT)
    urls = {name: _start_server(stack, servers[name]) for name, needed in wanted.items() if needed}
    _say(f"embedded services under {EMBEDDED_ROOT.resolve()}:", "bold")
    for name, url in urls.items():
        _say(f"  {name}={url}")
    return urls


def _embedded_servers(root: Path) -> dict[str, "EmbeddedServer"]:
    try:
        from cli.embedded import EmbeddedPostgres, EmbeddedRedis
    except ImportError as exc:
        raise DevError(
            f"DATABASE_URL / REDIS_URL are unset and the embedded servers are missing ({exc}):"
            " install them with `uv sync --all-extras`, or set both variables"
        ) from exc
    return {"DATABASE_URL": EmbeddedPostgres(root), "REDIS_URL": EmbeddedRedis(root)}


def _start_server(stack: ExitStack, server: "EmbeddedServer") -> str:
    try:
        return stack.enter_context(server.running())
    except RuntimeError as exc:
        raise DevError(f"an embedded server did not start: {exc}") from exc


def _migrate(env: Mapping[str, str]) -> None:
    if not (PROJECT_ROOT / "alembic.ini").exists():
        raise DevError(f"no alembic.ini in {PROJECT_ROOT}: run auditq from a source checkout")
    _say("alembic upgrade head", "bold")
    subprocess.run(
        _module_args("alembic", "upgrade", "head"), cwd=PROJECT_ROOT, env=env, check=True
    )


def _start_simulator(
    supervisor: "Supervisor", env: Mapping[str, str], options: SimulatorOptions
) -> dict[str, str]:
    """Start `auditq simulator` on a free port; return the variables that point at it."""
    port = free_port()
    address = ["--host", "127.0.0.1", "--port", str(port)]
    args = _module_args("cli.main", "simulator", *address, *options.args())
    supervisor.wait_for_port(supervisor.spawn("simulator", args, env), "127.0.0.1", port)
    base_url = f"http://127.0.0.1:{port}/v1"
    _print_simulator_warning(base_url)
    return {"OPENAI_BASE_URL": base_url, "OPENAI_API_KEY": SIMULATOR_API_KEY}


def _print_simulator_warning(base_url: str) -> None:
    message = (
        f"OPENAI_API_KEY is not set: the worker asks the bundled SIMULATOR at {base_url}.\n"
        "Every audit result is SYNTHETIC, not the judgement of a language model.\n"
        "Set OPENAI_API_KEY (and OPENAI_BASE_URL for another provider) for real audits."
    )
    console.print(Panel(message, title="SIMULATED MODEL", style="bold black on yellow"))


def _print_ready(options: DevOptions, env: Mapping[str, str]) -> None:
    base = f"http://{_reachable(options.host)}:{options.port}"
    lines = [f"API   {base}/api/v1", f"docs  {base}/docs"]
    if not options.api_only:
        lines.append(_model_line(env))
        lines.extend(_metrics_lines(options, env))
    lines.append("Ctrl-C stops everything")
    console.print(Panel("\n".join(lines), title="auditq dev is up", style="bold green"))


def _metrics_lines(options: DevOptions, env: Mapping[str, str]) -> list[str]:
    """Where the workers' metrics are, with METRICS_PORT set."""
    if not env.get("METRICS_PORT", "").isdigit():
        return []
    first = int(env["METRICS_PORT"])
    ports = ", ".join(str(first + n) for n in range(options.workers))
    return [f"metrics  workers on ports {ports} (/metrics; each worker logs its own)"]


def _model_line(env: Mapping[str, str]) -> str:
    """Which model the workers ask, and where: the first thing to check when audits fail."""
    if env.get("OPENAI_API_KEY") == SIMULATOR_API_KEY:
        return f"model SIMULATOR at {env['OPENAI_BASE_URL']}: results are synthetic"
    from shared.config import Settings

    model = env.get("OPENAI_MODEL") or Settings.model_fields["openai_model"].default
    base_url = env.get("OPENAI_BASE_URL") or f"{OPENAI_DEFAULT_BASE_URL} (OpenAI)"
    return f"model {model} at {base_url}\n      (a worker that cannot reach it logs why)"


def _require_module(name: str, message: str) -> None:
    if importlib.util.find_spec(name) is None:
        raise DevError(message)


def _reachable(host: str) -> str:
    """The address a local client uses to reach a server bound to `host`."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def free_port() -> int:
    """A loopback port free a moment ago (another process could take it first)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextmanager
def _stop_on_signals() -> Iterator[ExitStack]:
    """An exit stack whose body the first SIGINT or SIGTERM interrupts (`StopRequested`).

    Its unwinding is never interrupted: once it starts, signals are ignored, so the
    children and the servers are always stopped.
    """
    unwinding = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        if not unwinding.is_set():
            unwinding.set()
            raise StopRequested(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        with ExitStack() as stack:
            try:
                yield stack
            finally:
                unwinding.set()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextmanager
def _reported_failures() -> Iterator[list[BaseException]]:
    """Report how the run ended; a stop request is a clean end, anything listed is not."""
    failed: list[BaseException] = []
    try:
        yield failed
    except StopRequested as stop:
        _say(f"{stop}: stopped", "bold")
    except (ChildExited, DevError) as exc:
        _say(str(exc), "bold red")
        failed.append(exc)
    except subprocess.CalledProcessError as exc:
        _say(f"{' '.join(map(str, exc.cmd))} failed (exit {exc.returncode})", "bold red")
        failed.append(exc)


def _say(message: str, style: str = "") -> None:
    console.print(Text(message, style=style), soft_wrap=True)


@dataclass
class Child:
    name: str
    process: "subprocess.Popen[str]"
    output: threading.Thread


class Supervisor:
    """Child processes in their own sessions, their output prefixed with their name.

    Signals reach the children only through `stop_all`, so the stack stops in order.
    """

    def __init__(self) -> None:
        self.children: list[Child] = []

    def __enter__(self) -> "Supervisor":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop_all()

    def spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> Child:
        process = subprocess.Popen(
            args,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
            start_new_session=True,
        )
        colour = _COLOURS[len(self.children) % len(_COLOURS)]
        output = threading.Thread(target=_relay, args=(name, colour, process), daemon=True)
        child = Child(name, process, output)
        self.children.append(child)
        output.start()
        return child

    def watch(self) -> None:
        """Block until a child exits, then raise `ChildExited`."""
        while True:
            self._raise_if_one_exited()
            time.sleep(0.2)

    def wait_for_port(self, child: Child, host: str, port: int) -> None:
        """Block until `child` accepts connections on `host:port`."""
        deadline = time.monotonic() + _READY_TIMEOUT_S
        while not _accepts_connections(host, port):
            self._raise_if_one_exited()
            if time.monotonic() > deadline:
                raise ChildExited(f"{child.name} did not listen on {host}:{port} in time")
            time.sleep(0.1)

    def stop_all(self) -> None:
        """SIGTERM every running child; SIGKILL what is left after a grace period."""
        self._signal_running(signal.SIGTERM)
        deadline = time.monotonic() + _STOP_TIMEOUT_S
        for child in self.children:
            with suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
        self._signal_running(signal.SIGKILL)
        for child in self.children:
            child.process.wait()
            child.output.join(timeout=1)

    def _signal_running(self, sig: signal.Signals) -> None:
        for child in self.children:
            # Only a child not reaped yet: a reaped child's pid may belong to another process.
            if child.process.returncode is None:
                with suppress(ProcessLookupError, PermissionError):
                    os.killpg(child.process.pid, sig)  # its group: what it started goes too

    def _raise_if_one_exited(self) -> None:
        for child in self.children:
            code = child.process.poll()
            if code is not None:
                raise ChildExited(f"{child.name} exited with code {code}: stopping the rest")


def _relay(name: str, colour: str, process: "subprocess.Popen[str]") -> None:
    assert process.stdout is not None
    prefix = Text(f"{name:<9}| ", style=colour)
    for line in process.stdout:
        # from_ansi: the colours of a child's console log lines are kept, not shown as codes.
        console.print(prefix + Text.from_ansi(line.rstrip("\n")), soft_wrap=True)


def _accepts_connections(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False
