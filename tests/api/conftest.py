"""Fixtures of the API tests: apps whose settings differ from the test's, and their traces."""

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from functools import partial
from typing import Any

import pytest
from arq.connections import ArqRedis
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from tests.api.checks import assert_nothing_written

ClientFactory = Callable[..., AbstractAsyncContextManager[AsyncClient]]
NothingWritten = Callable[[], Awaitable[None]]


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
    """`async with client_with(**overrides) as client`: an app with these settings changed."""

    def build(**overrides: Any) -> AbstractAsyncContextManager[AsyncClient]:
        return _client_for(settings.model_copy(update=overrides))

    return build


@pytest.fixture
def nothing_written(engine: AsyncEngine, redis: ArqRedis, settings: Settings) -> NothingWritten:
    """`await nothing_written()`: no row in any table and no job in the test's queue."""
    return partial(assert_nothing_written, engine, redis, settings)
