"""The embedded servers: what makes `make run` and `make test` work on a bare machine."""

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis.asyncio
from arq.connections import RedisSettings, create_pool
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from cli.embedded import POSTGRES_BIN_PATH, EmbeddedRedis, EmbeddedServices, EmbeddedUrls

# Another process using the embedded Redis until its stdin closes.
OTHER_USER = """
import sys
from pathlib import Path
from cli.embedded import EmbeddedRedis
with EmbeddedRedis(Path(sys.argv[1])).running():
    print("ready", flush=True)
    sys.stdin.read()
"""


@pytest.fixture(scope="module")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedServices]:
    # Deeper than a unix socket path may be: the servers must place their sockets elsewhere.
    root = tmp_path_factory.mktemp("embedded") / ("deep" * 15) / ("er" * 30)
    services = EmbeddedServices(root)
    yield services
    services.stop()


@pytest.fixture(scope="module")
def urls(services: EmbeddedServices) -> EmbeddedUrls:
    return services.start()


async def _current_database(database_url: str) -> str:
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            return str(await connection.scalar(text("SELECT current_database()")))
    finally:
        await engine.dispose()


async def _redis_round_trip(redis_url: str) -> bytes | None:
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set("auditq:embedded", "ok")
        value: bytes | None = await client.get("auditq:embedded")
        return value
    finally:
        await client.aclose()


def test_the_postgres_programs_are_where_pgserver_keeps_them() -> None:
    """`cli.embedded` runs and recognises them by pgserver's private `_commands` path.

    pgserver is pinned below its next minor for it; an upgrade that moves them fails here.
    """
    for program in ("postgres", "psql", "initdb", "pg_ctl"):
        assert os.access(POSTGRES_BIN_PATH / program, os.X_OK), program


async def test_start_serves_the_auditq_database_and_redis(urls: EmbeddedUrls) -> None:
    assert urls.database_url.startswith("postgresql+asyncpg://")
    assert await _current_database(urls.database_url) == "auditq"
    assert await _redis_round_trip(urls.redis_url) == b"ok"


async def test_arq_accepts_the_redis_url(urls: EmbeddedUrls) -> None:
    pool = await create_pool(RedisSettings.from_dsn(urls.redis_url))
    try:
        assert await pool.ping()
    finally:
        await pool.aclose()


def test_a_second_start_reuses_the_running_servers(
    services: EmbeddedServices, urls: EmbeddedUrls
) -> None:
    pids = (services.postgres.pid(), services.redis.pid())

    assert services.start() == urls
    assert (services.postgres.pid(), services.redis.pid()) == pids


async def test_start_recovers_from_a_crash(services: EmbeddedServices, urls: EmbeddedUrls) -> None:
    for pid in (services.postgres.pid(), services.redis.pid()):
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        _wait_until_gone(pid)

    assert services.start() == urls
    assert await _current_database(urls.database_url) == "auditq"
    assert await _redis_round_trip(urls.redis_url) == b"ok"


def test_stop_leaves_nothing_running(services: EmbeddedServices, urls: EmbeddedUrls) -> None:
    pids = [services.postgres.pid(), services.redis.pid()]

    services.stop()

    assert [services.postgres.pid(), services.redis.pid()] == [None, None]
    for pid in pids:
        assert pid is not None
        assert _gone(pid)
    assert not Path(urls.redis_url.removeprefix("unix://")).exists()


def _wait_until_gone(pid: int) -> None:
    """A SIGKILL takes effect when the process is next scheduled, not when kill() returns."""
    deadline = time.monotonic() + 10
    while not _gone(pid):
        assert time.monotonic() < deadline, f"process {pid} survived SIGKILL"
        time.sleep(0.01)


def _gone(pid: int) -> bool:
    """Exited: no such process, or a zombie its (foreign) parent has not reaped yet."""
    try:
        return bool(psutil.Process(pid).status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


def test_running_stops_the_server_only_when_its_last_user_leaves(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    other = subprocess.Popen(
        [sys.executable, "-c", OTHER_USER, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert other.stdout is not None
    assert other.stdout.readline() == "ready\n"

    with server.running():
        pass
    still_running = server.pid()
    other.communicate("", timeout=30)

    assert still_running is not None
    assert _gone(still_running)
    assert server.pid() is None
