"""PostgreSQL and Redis servers of the fault suite's own, which it may stop and restart.

The machine's servers are never touched: a test that restarts a server gets one started
here, under its temporary directory (the embedded servers of `auditq dev`). A test that
restarts nothing may use the machine's PostgreSQL (`TEST_DATABASE_URL`) with a scratch
database of its own.
"""

import asyncio
import itertools
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy.engine import make_url

from cli.embedded import EmbeddedPostgres, EmbeddedRedis
from shared.config import Settings
from tests.conftest import _administer, migrate

_SCRATCH = itertools.count()


class OwnRedis:
    """A redis-server on a unix socket; nothing is persisted, so a restart empties it."""

    def __init__(self, root: Path) -> None:
        self._server = EmbeddedRedis(root)
        self.url = self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        assert self._server.start() == self.url

    async def restart(self, *, down_for: float) -> None:
        """Stop the server, leave it down for `down_for` seconds, start it again (empty)."""
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start)


class OwnPostgres:
    """A PostgreSQL server (pgserver) on a unix socket; a restart is a fast shutdown."""

    def __init__(self, root: Path) -> None:
        self._server = EmbeddedPostgres(root, database="postgres")
        self.server_url = self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def start(self) -> None:
        assert self._server.start() == self.server_url

    async def restart(self, *, down_for: float) -> None:
        """Stop the server (its connections are cut), wait `down_for` seconds, start it again."""
        await asyncio.to_thread(self.stop)
        await asyncio.sleep(down_for)
        await asyncio.to_thread(self.start)


@asynccontextmanager
async def scratch_database(server_url: str) -> AsyncIterator[str]:
    """A new database on `server_url`, migrated with the real alembic; dropped afterwards."""
    name = f"auditq_faults_{os.getpid()}_{next(_SCRATCH)}"
    await _administer(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    await _administer(server_url, f"CREATE DATABASE {name}")
    url = make_url(Settings(database_url=server_url).database_url).set(database=name)
    database_url = url.render_as_string(hide_password=False)
    await asyncio.to_thread(migrate, database_url, "upgrade", "head")
    try:
        yield database_url
    finally:
        await _administer(server_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
