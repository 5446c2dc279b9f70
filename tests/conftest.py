"""Real PostgreSQL and Redis for every test.

`TEST_DATABASE_URL` / `TEST_REDIS_URL` name servers to use (CI points them at the
machine's own); without them the embedded servers of `auditq dev` are started
under `.auditq/test`. The suite creates its own database on that server,
migrates it once with the real `alembic upgrade head`, and empties the tables
and the Redis database before each test. Each test gets its own queue name.
"""

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import asyncpg
import pytest
from arq.connections import ArqRedis
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from shared.config import Settings, get_settings
from shared.db import SessionFactory, asyncpg_dsn, create_engine, create_session_factory
from shared.queue import create_redis

ROOT = Path(__file__).resolve().parents[1]
# One database per test run, so that runs side by side do not empty each other's tables.
TEST_DATABASE = f"auditq_test_{os.getpid()}"

pytest_plugins = ["tests.fixtures.simulator", "tests.fixtures.spans"]


@pytest.fixture(scope="session")
def server_urls() -> Iterator[tuple[str, str]]:
    """The servers: TEST_* URLs, or embedded ones, stopped again when the run ends."""
    database_url = os.environ.get("TEST_DATABASE_URL")
    redis_url = os.environ.get("TEST_REDIS_URL")
    if database_url and redis_url:
        yield database_url, redis_url
        return
    from cli.embedded import EmbeddedServices

    with EmbeddedServices(ROOT / ".auditq" / "test").running() as embedded:
        yield database_url or embedded.database_url, redis_url or embedded.redis_url


async def _administer(server_url: str, *statements: str) -> None:
    connection = await asyncpg.connect(asyncpg_dsn(server_url))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def _test_database_url(server_url: str) -> str:
    url = make_url(Settings(database_url=server_url).database_url).set(database=TEST_DATABASE)
    return url.render_as_string(hide_password=False)


def migrate(database_url: str, *args: str) -> None:
    """Run the real `alembic` command against the test database."""
    subprocess.run(
        [sys.executable, "-m", "alembic", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url},
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="session")
async def database_url(server_urls: tuple[str, str]) -> AsyncIterator[str]:
    server_url, redis_url = server_urls
    await _administer(
        server_url,
        f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)",
        f"CREATE DATABASE {TEST_DATABASE}",
    )
    url = _test_database_url(server_url)
    migrate(url, "upgrade", "head")
    os.environ.update(DATABASE_URL=url, REDIS_URL=redis_url)
    get_settings.cache_clear()
    yield url
    await _administer(server_url, f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)")


@pytest.fixture(scope="session")
def redis_url(database_url: str) -> str:
    return os.environ["REDIS_URL"]


@pytest.fixture
def settings(database_url: str, redis_url: str, clean: None) -> Settings:
    """This test's settings: the test servers, and a queue of its own."""
    return Settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_name=f"auditq:test:{uuid4().hex[:8]}",
    )


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(Settings(database_url=database_url), pool_size=5)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def session_factory(engine: AsyncEngine) -> SessionFactory:
    return create_session_factory(engine)


# Tenant `default` exists from the migration on, as it left it.
RESET_TENANTS = (
    "DELETE FROM tenant WHERE name <> 'default'",
    "UPDATE tenant SET max_queued = NULL, submit_rpm = NULL, weight = 1, webhook_secret = NULL, "
    "monthly_budget_usd = NULL",
)


@pytest.fixture
async def clean(engine: AsyncEngine, redis_url: str) -> None:
    """Empty the tables before the test.

    Redis is not flushed: each test has its own queue name and every job id
    names a fresh audit, so tests cannot see each other's jobs.
    """
    async with engine.begin() as connection:
        await connection.exec_driver_sql(
            "TRUNCATE audit, batch, rubric, api_key, webhook_event, tenant_spend CASCADE"
        )
        for statement in RESET_TENANTS:
            await connection.exec_driver_sql(statement)


@pytest.fixture
async def session(session_factory: SessionFactory, clean: None) -> AsyncIterator[AsyncSession]:
    async with session_factory() as session:
        yield session


@pytest.fixture
async def redis(settings: Settings) -> AsyncIterator[ArqRedis]:
    redis = create_redis(settings)
    yield redis
    await redis.aclose()


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    from api.app import create_app

    app = create_app(settings)
    async with LifespanManager(app):
        yield app


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[AsyncClient]:
    transport = ASGITransport(app=app)
    async with AsyncClient(transport=transport, base_url="http://test/api/v1") as client:
        yield client
