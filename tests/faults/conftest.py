"""Fixtures of the fault-injection suite: servers it may restart, and the stack's processes.

Every test here is `slow`: `make test` leaves them out, `make test-faults` runs them.
Redis is always one of the suite's own (tests restart it, and a shared Redis database
would mix the arq cron locks of concurrent runs); PostgreSQL is the suite's own where a
test restarts it, else `TEST_DATABASE_URL`'s server when set, with a scratch database.
"""

import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.faults.services import OwnPostgres, OwnRedis, scratch_database
from tests.faults.stack import Stack


@pytest.fixture(scope="session")
def own_postgres() -> Iterator[OwnPostgres]:
    # Not under pytest's temporary directory: as root, pgserver runs PostgreSQL as its own
    # user, who must be able to enter the data directory, and any pytest starting on the
    # machine meanwhile makes `/tmp/pytest-of-root` private to root again.
    root = Path(tempfile.mkdtemp(prefix="auditq-faults-"))
    server = OwnPostgres(root)
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(request: pytest.FixtureRequest) -> str:
    """The server of the scratch databases of tests that leave PostgreSQL running."""
    machine = os.environ.get("TEST_DATABASE_URL")
    if machine:
        return machine
    own: OwnPostgres = request.getfixturevalue("own_postgres")
    return own.server_url


@pytest.fixture
async def scratch_db(postgres_server: str) -> AsyncIterator[str]:
    """A migrated scratch database for this test."""
    async with scratch_database(postgres_server) as url:
        yield url


@pytest.fixture
async def own_scratch_db(own_postgres: OwnPostgres) -> AsyncIterator[str]:
    """A migrated scratch database on the suite's own PostgreSQL, which the test may restart.

    The server is started again (if a test left it stopped) before and after the test.
    """
    own_postgres.start()
    async with scratch_database(own_postgres.server_url) as url:
        yield url
        own_postgres.start()


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    server = OwnRedis(tmp_path / "redis")
    yield server
    server.stop()


@pytest.fixture
def stacks(tmp_path: Path) -> Iterator[list[Stack]]:
    """Stacks a test starts (`stacks.append(Stack(...))`) are stopped after it, all of them."""
    started: list[Stack] = []
    yield started
    for stack in started:
        stack.stop_all()
