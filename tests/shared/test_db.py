"""`is_database_unavailable`: an outage of PostgreSQL, told apart from a bug of ours.

The API answers the first with 503 `database_unavailable` and the worker waits it out;
the second stays a 500 and a failed job. tests/faults/ restarts a real server.
"""

import asyncio
from typing import Literal

import asyncpg
import pytest
import sqlalchemy.exc
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db import (
    DATABASE_ERRORS,
    create_engine,
    create_session_factory,
    is_database_unavailable,
    session_scope,
    statement_connection,
)
from tests.fixtures.pgproxy import proxy_closing_late


class DriverError(Exception):
    """What SQLAlchemy's asyncpg adapter wraps a driver error in: its SQLSTATE kept."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__("driver error")
        self.sqlstate = sqlstate


def wrapped(sqlstate: str | None, *, invalidated: bool = False) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.DBAPIError(
        "SELECT 1", {}, DriverError(sqlstate), connection_invalidated=invalidated
    )


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        FileNotFoundError(2, "No such file or directory"),  # the unix socket is gone
        OSError("Multiple exceptions: [Errno 111] Connect call failed"),
        TimeoutError(),
        asyncpg.CannotConnectNowError("the database system is starting up"),
        asyncpg.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        asyncpg.InterfaceError("cannot call Connection.fetchrow(): connection is closed"),
        wrapped("57P03"),  # starting up, at connect
        wrapped("57P01"),  # shut down by the administrator
        wrapped("08006"),  # connection failure
        wrapped("53300"),  # too many connections
        wrapped(None, invalidated=True),  # a statement cut short by a restart
        sqlalchemy.exc.OperationalError("SELECT 1", {}, DriverError(None)),
        sqlalchemy.exc.TimeoutError("QueuePool limit reached"),
    ],
    ids=repr,
)
def test_an_outage_is_unavailable(error: BaseException) -> None:
    assert is_database_unavailable(error)


def test_a_connection_out_of_step_with_the_server_is_unavailable() -> None:
    error = asyncpg.InternalClientError(
        "cannot switch to state 12; another operation (2) is in progress"
    )
    assert isinstance(error, DATABASE_ERRORS)
    assert is_database_unavailable(error)


@pytest.mark.parametrize(
    "error",
    [
        wrapped("23505"),  # unique violation
        wrapped("42P01"),  # undefined table
        wrapped("57014"),  # statement timeout: slow, not down
        wrapped(None),
        sqlalchemy.exc.IntegrityError("INSERT", {}, DriverError("23505")),
        asyncpg.UniqueViolationError("duplicate key"),
        asyncpg.InterfaceError("the server expects 2 arguments for this query, 1 was passed"),
        ValueError("not a database error"),
    ],
    ids=repr,
)
def test_a_bug_is_not_unavailable(error: BaseException) -> None:
    assert not is_database_unavailable(error)


# How much later than the server's FATAL error the client sees its connection close.
CLOSE_LATE_BY_S = 1.0


@pytest.mark.parametrize(
    "close_late_by_s", [0.0, CLOSE_LATE_BY_S], ids=["close seen", "close not seen yet"]
)
async def test_a_connection_the_server_ended_is_unavailable_once_then_replaced(
    database_url: str, close_late_by_s: float
) -> None:
    # Not yet seen: what a PostgreSQL restart under load can leave, the error read first.
    async with proxy_closing_late(database_url, late_by_s=close_late_by_s) as proxy:
        engine = create_engine(Settings(database_url=proxy.url), pool_size=1)
        try:
            async with statement_connection(engine) as conn:
                ended = await conn.fetchval("SELECT pg_backend_pid()")
            assert proxy.backend_pids == [ended]
            await proxy.end_backends()
            await asyncio.sleep(CLOSE_LATE_BY_S / 2)  # under the 1 s idle ping

            with pytest.raises(DATABASE_ERRORS) as raised:
                async with statement_connection(engine) as conn:
                    await conn.fetchval("SELECT 1")
            assert is_database_unavailable(raised.value)

            async with statement_connection(engine) as conn:
                assert await conn.fetchval("SELECT pg_backend_pid()") != ended
        finally:
            await engine.dispose()


async def test_a_session_on_a_connection_the_server_ended_is_unavailable(
    database_url: str,
) -> None:
    async with proxy_closing_late(database_url, late_by_s=CLOSE_LATE_BY_S) as proxy:
        engine = create_engine(Settings(database_url=proxy.url), pool_size=1)
        sessions = create_session_factory(engine)
        try:
            async with sessions() as session:
                ended = (await session.execute(sqlalchemy.text("SELECT pg_backend_pid()"))).scalar()
            await proxy.end_backends()
            await asyncio.sleep(CLOSE_LATE_BY_S / 2)

            with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
                async with sessions() as session:
                    await session.execute(sqlalchemy.text("SELECT 1"))
            assert is_database_unavailable(raised.value)

            async with sessions() as session:
                pid = (await session.execute(sqlalchemy.text("SELECT pg_backend_pid()"))).scalar()
            assert pid != ended
        finally:
            await engine.dispose()


async def test_a_failed_checkout_is_raised_as_sqlalchemy_raises_it(database_url: str) -> None:
    missing = make_url(database_url).set(database="auditq_no_such_database")
    engine = create_engine(Settings(database_url=missing.render_as_string(hide_password=False)))
    try:
        with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
            async with statement_connection(engine) as conn:
                await conn.fetchval("SELECT 1")
        assert isinstance(raised.value.orig, engine.dialect.loaded_dbapi.Error)
    finally:
        await engine.dispose()


async def _statements_left_on_the_server(engine: AsyncEngine) -> int:
    """Runs statements as the API and the worker do (a repository's SQL on a statement
    connection, and in a session), then counts the prepared statements their connection kept."""
    async with statement_connection(engine) as conn:
        await conn.fetchrow("SELECT $1::text AS name, now() AS at", "one")
        await conn.fetch("SELECT $1::jsonb AS doc", '{"a": 1}')
    async with session_scope(create_session_factory(engine)) as session:
        await session.execute(sqlalchemy.text("SELECT :n + 1"), {"n": 1})
        counted = await session.execute(
            sqlalchemy.text("SELECT count(*) FROM pg_prepared_statements")
        )
        left: int = counted.scalar_one()
    return left


@pytest.mark.parametrize("mode", ["session", "transaction"])
async def test_behind_a_transaction_pooler_no_statement_is_left_prepared(
    database_url: str, mode: Literal["session", "transaction"]
) -> None:
    """What a transaction pooler needs: a server connection passed from client to client
    keeps no named statement (one would be missing on the next, or clash with another's)."""
    engine = create_engine(
        Settings(database_url=database_url, database_pool_mode=mode), pool_size=1
    )
    try:
        left = await _statements_left_on_the_server(engine)
    finally:
        await engine.dispose()

    if mode == "transaction":
        assert left == 0
    else:
        assert left > 0  # the cache that makes each statement one round trip
