"""The API's key directory: cached while PostgreSQL can tell it of changes, never otherwise."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope
from shared.tenants import keys, service
from shared.tenants.caller import Role
from shared.tenants.directory import Directory
from tests.api.checks import until_listening, until_notified


@pytest.fixture
async def directory(engine: AsyncEngine, settings: Settings) -> AsyncIterator[Directory]:
    directory = Directory(engine, settings)
    yield directory
    await directory.stop()


async def make_key(factory: SessionFactory) -> str:
    async with session_scope(factory) as session:
        made = await service.create_key(
            SessionStatements(session), tenant="acme", label=None, role=Role.MEMBER
        )
    return made.secret


async def revoke(factory: SessionFactory, key: str) -> None:
    async with session_scope(factory) as session:
        await service.revoke_key(SessionStatements(session), key)


async def test_without_its_listener_every_lookup_asks_the_database(
    directory: Directory, session_factory: SessionFactory
) -> None:
    key = await make_key(session_factory)
    assert await directory.key(keys.digest(key)) is not None

    await revoke(session_factory, key)  # no listener: nobody tells the directory

    assert await directory.key(keys.digest(key)) is None


async def test_a_notified_change_empties_the_cache(
    directory: Directory, session_factory: SessionFactory
) -> None:
    await directory.start()
    await until_listening(directory)
    key = await make_key(session_factory)
    found = await directory.key(keys.digest(key))
    assert found is not None
    assert found.tenant == "acme"
    before = directory.generation

    await revoke(session_factory, key)
    await until_notified(directory, since=before)

    assert await directory.key(keys.digest(key)) is None


async def test_limits_fall_back_on_the_settings(
    session_factory: SessionFactory, engine: AsyncEngine
) -> None:
    settings = Settings(database_url="postgresql://unused", tenant_max_queued=7)
    with_defaults = Directory(engine, settings)
    async with session_scope(session_factory) as session:
        await service.set_tenant(SessionStatements(session), "acme", {"submit_rpm": 60})

    acme = await with_defaults.limits("acme")
    unknown = await with_defaults.limits("nobody")

    assert (acme.max_queued, acme.submit_rpm) == (7, 60)
    assert (unknown.max_queued, unknown.submit_rpm) == (7, None)


async def test_it_listens_on_the_direct_url_past_a_pooler(
    engine: AsyncEngine, settings: Settings, session_factory: SessionFactory
) -> None:
    # DATABASE_URL leads nowhere: only the direct URL can carry the LISTEN.
    behind_a_pooler = settings.model_copy(
        update={
            "database_url": "postgresql+asyncpg://postgres@127.0.0.1:1/none",
            "database_pool_mode": "transaction",
            "database_direct_url": settings.database_url,
        }
    )
    directory = Directory(engine, behind_a_pooler)
    await directory.start()
    try:
        await until_listening(directory)
        key = await make_key(session_factory)
        assert await directory.key(keys.digest(key)) is not None
        before = directory.generation

        await revoke(session_factory, key)
        await until_notified(directory, since=before)

        assert await directory.key(keys.digest(key)) is None
    finally:
        await directory.stop()


async def test_behind_a_transaction_pooler_without_a_direct_url_it_caches_nothing(
    engine: AsyncEngine, settings: Settings, session_factory: SessionFactory
) -> None:
    # DATABASE_URL is PostgreSQL itself here, so a listener would start: none must.
    pooled = settings.model_copy(update={"database_pool_mode": "transaction"})
    directory = Directory(engine, pooled)
    await directory.start()
    try:
        key = await make_key(session_factory)
        for _ in range(20):
            assert await directory.key(keys.digest(key)) is not None
            await asyncio.sleep(0.01)
        assert not directory.listening

        await revoke(session_factory, key)  # nothing to notify it: it must ask again

        assert await directory.key(keys.digest(key)) is None
    finally:
        await directory.stop()
