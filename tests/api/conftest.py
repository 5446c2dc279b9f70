"""Fixtures of the API tests: apps with settings of their own, and what was stored."""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import pytest
import sqlalchemy as sa
from arq.connections import ArqRedis
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings

ClientFactory = Callable[..., AbstractAsyncContextManager[AsyncClient]]


@asynccontextmanager
async def _client_for(settings: Settings) -> AsyncIterator[AsyncClient]:
    from api.app import create_app

    app = create_app(settings)
    async with LifespanManager(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://test/api/v1") as client:
            yield client


@pytest.fixture
def client_with(settings: Settings) -> ClientFactory:
    """A client of an app whose settings differ from the test's in `overrides`."""

    def build(**overrides: Any) -> AbstractAsyncContextManager[AsyncClient]:
        return _client_for(settings.model_copy(update=overrides))

    return build


class Stored:
    """What the API left behind: audit rows in PostgreSQL, jobs in Redis."""

    def __init__(self, engine: AsyncEngine, redis: ArqRedis, settings: Settings) -> None:
        self.engine = engine
        self.redis = redis
        self.settings = settings

    async def audit_count(self) -> int:
        async with self.engine.connect() as connection:
            count = await connection.scalar(sa.text("SELECT count(*) FROM audit"))
        return int(count or 0)

    async def audit_row(self, audit_id: str) -> dict[str, Any]:
        async with self.engine.connect() as connection:
            result = await connection.execute(
                sa.text("SELECT * FROM audit WHERE id = :id"),
                {"id": audit_id},
            )
            return dict(result.mappings().one())

    async def queued_job_ids(self) -> list[str]:
        """Jobs in this test's queue: Redis may be shared, the queue name is not."""
        members = await self.redis.zrange(self.settings.queue_name, 0, -1)
        return sorted(member.decode() for member in members)

    async def assert_nothing(self) -> None:
        """No audit row and no job: a refused request wrote nothing anywhere.

        Every enqueue writes the job key and the queue entry in one MULTI, so an
        empty queue means no job was sent.
        """
        assert await self.audit_count() == 0
        assert await self.queued_job_ids() == []


@pytest.fixture
def stored(engine: AsyncEngine, redis: ArqRedis, settings: Settings) -> Stored:
    return Stored(engine, redis, settings)
