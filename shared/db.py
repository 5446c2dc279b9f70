"""The async engine, sessions and the metadata every table hangs off.

Transactions are owned by the caller of the service layer: the API's request
dependency or the worker's `session_scope`. Services never commit.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any, Protocol, Self, TypeVar, cast

import asyncpg
import sqlalchemy.exc
from sqlalchemy import CursorResult, MetaData, Numeric, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InvalidatePoolError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlmodel import SQLModel

from shared.config import Settings

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata: MetaData = SQLModel.metadata
metadata.naming_convention = NAMING_CONVENTION

# Amounts of USD, exact: ten decimal places are a ten-thousandth of a micro-dollar, below
# what one token costs at any price, and twenty digits leave ten billion dollars.
USD = Numeric(20, 10)

SessionFactory = async_sessionmaker[AsyncSession]
T = TypeVar("T")


def asyncpg_dsn(database_url: str) -> str:
    """What asyncpg accepts for `DATABASE_URL` (a SQLAlchemy URL: no `+asyncpg`)."""
    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


# A pooled connection idle for longer than this is pinged before it is used again.
PING_AFTER_IDLE_S = 1.0
_CHECKED_IN_AT = "auditq.checked_in_at"


def create_engine(settings: Settings, *, pool_size: int = 20) -> AsyncEngine:
    """One engine per process, keeping up to `pool_size` connections open.

    No overflow: at peak load, overflow connections are opened and closed again
    request after request, each a new PostgreSQL backend. Requests beyond the
    pool wait for a connection (`pool_timeout`).
    """
    engine = create_async_engine(
        settings.database_url,
        pool_size=pool_size,
        max_overflow=0,
        pool_timeout=10,
        connect_args={"timeout": 5, "command_timeout": 30, **statement_options(settings)},
    )
    _ping_idle_connections(engine)
    return engine


def _unnamed() -> str:
    return ""


def statement_options(settings: Settings) -> dict[str, Any]:
    """How statements are prepared: cached by name on the connection, unless behind a
    transaction pooler (`DATABASE_POOL_MODE=transaction`).

    A transaction pooler hands a client's next transaction, or its next statement outside
    one, to whichever server connection is free, and every server connection to many
    clients in turn: a statement prepared by name on one is missing on the next, or its
    name is already taken by another client's. So there, nothing is named. asyncpg caches
    nothing (`statement_cache_size=0`; it then sends an unnamed statement's Parse again
    with its Bind, as PgBouncer may route them apart), nor does SQLAlchemy's adapter
    (`prepared_statement_cache_size=0`), and the statement the adapter prepares to learn
    a result's columns is unnamed too, inside the transaction it opens first. Unique names
    (`prepared_statement_name_func` returning a uuid, SQLAlchemy's own advice) would work
    as well, but would pile up on the server connections: PgBouncer DISCARDs them only in
    session mode. The price is one Parse per statement (docs/OPERATIONS.md).
    """
    if settings.database_pool_mode == "session":
        return {}
    return {
        "statement_cache_size": 0,
        "prepared_statement_cache_size": 0,
        "prepared_statement_name_func": _unnamed,
    }


def direct_statement_options(settings: Settings) -> dict[str, Any]:
    """`statement_options` for a connection to `direct_database_url`, which is the pooler's
    `DATABASE_URL` when `DATABASE_DIRECT_URL` is unset."""
    return {} if settings.database_direct_url else statement_options(settings)


def _ping_idle_connections(engine: AsyncEngine) -> None:
    """`pool_pre_ping`, for connections that sat idle: survives a PostgreSQL restart.

    asyncpg's ping is three round trips (BEGIN, a query, ROLLBACK); on every
    checkout it cost a quarter of a request's CPU. A connection used within the
    last second needs none: a restart takes longer than that, and a connection
    that breaks anyway invalidates the whole pool on its first error.
    """
    dialect = engine.sync_engine.dialect

    def note_checkin(dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN_AT] = time.monotonic()

    def ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        checked_in_at = record.info.get(_CHECKED_IN_AT)
        if checked_in_at is None or time.monotonic() - checked_in_at < PING_AFTER_IDLE_S:
            return
        try:
            dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # Like a failed pre-ping: reconnect, and drop every older connection too.
            raise InvalidatePoolError() from exc

    event.listen(engine.sync_engine, "checkin", note_checkin)
    event.listen(engine.sync_engine, "checkout", ping_if_idle)


# What a statement or a connection attempt raises while PostgreSQL is down, restarting
# or unreachable, among other errors: `is_database_unavailable` tells which is which.
DATABASE_ERRORS = (
    sqlalchemy.exc.DBAPIError,
    sqlalchemy.exc.TimeoutError,
    OSError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
)
# SQLSTATE classes of a server that refuses work for now: connection exceptions,
# shutting down, crashed, starting up, and out of connection slots.
_UNAVAILABLE_SQLSTATES = ("08", "57P01", "57P02", "57P03", "53300")


def is_database_unavailable(exc: BaseException) -> bool:
    """PostgreSQL cannot be reached right now: a moment's outage, not a bug of ours.

    A statement cut short by a restart comes as a `DBAPIError` whose connection was
    invalidated; a connection refused as an `OSError` (the port closed, the unix socket
    gone); "the database system is starting up" and the like by their SQLSTATE, which
    SQLAlchemy keeps on the error it wraps the driver's in.
    """
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        return (
            exc.connection_invalidated
            or isinstance(exc, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError))
            or _refused_for_now(exc.orig)
        )
    return (
        isinstance(exc, (sqlalchemy.exc.TimeoutError, OSError, asyncpg.ConnectionDoesNotExistError))
        or _closed_under_us(exc)
        or _ended_by_the_server(exc)
        or _refused_for_now(exc)
    )


def _closed_under_us(error: BaseException) -> bool:
    """asyncpg's error for a pooled connection the server closed (on a `StatementConnection`).

    asyncpg has no class of its own for it: told by its message, as SQLAlchemy's asyncpg
    dialect tells it for sessions.
    """
    return isinstance(error, asyncpg.InterfaceError) and "connection is closed" in str(error)


def _ended_by_the_server(error: BaseException) -> bool:
    """asyncpg's protocol out of step: the server ended the connection between statements.

    A backend that PostgreSQL shuts down writes a FATAL error and closes its socket. A
    client that has read the error but not yet the close finds its connection still
    open and cannot start the next statement on it ("another operation is in progress").
    Sessions see the same as a disconnect (SQLAlchemy asks the driver).
    """
    return isinstance(error, asyncpg.InternalClientError)


def _refused_for_now(error: BaseException | None) -> bool:
    sqlstate = getattr(error, "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_UNAVAILABLE_SQLSTATES)


def create_session_factory(engine: AsyncEngine) -> SessionFactory:
    # Rows stay readable after commit: responses are built from them afterwards.
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


@asynccontextmanager
async def session_scope(factory: SessionFactory) -> AsyncIterator[AsyncSession]:
    """A session whose transaction commits on success and rolls back on error."""
    async with factory() as session, session.begin():
        yield session


async def in_transaction(
    database_url: str, work: Callable[["SessionStatements"], Awaitable[T]]
) -> T:
    """`work` in one transaction on an engine of its own, disposed after: for a command or
    a benchmark's set-up, not for a server, which keeps its engine."""
    engine = create_engine(Settings(database_url=database_url), pool_size=1)
    try:
        async with session_scope(create_session_factory(engine)) as session:
            return await work(SessionStatements(session))
    finally:
        await engine.dispose()


class Statements(Protocol):
    """What a repository sends its SQL through: a statement connection, or a session's.

    SQL is written once, in the table's repository, with `$n` placeholders; JSONB goes in
    as JSON text and comes back decoded, as SQLAlchemy's asyncpg dialect sets it up on
    every pooled connection. Rows are read by column name.
    `info` carries what must happen after commit (shared/queue.py).
    """

    @property
    def info(self) -> dict[Any, Any]: ...

    async def fetch(self, query: str, *args: Any) -> Sequence[Mapping[str, Any]]: ...

    async def fetchrow(self, query: str, *args: Any) -> Mapping[str, Any] | None: ...

    async def fetchval(self, query: str, *args: Any) -> Any: ...

    async def execute(self, query: str, *args: Any) -> None: ...


class StatementConnection:
    """A pooled connection outside any transaction: each statement commits on its own.

    For operations of one statement, or of several that need no common snapshot
    (submit, read, cancel or retry one audit; the worker's claim and fenced writes):
    they skip BEGIN and COMMIT, two round trips, and SQLAlchemy's statement execution,
    whose per-call CPU outweighed the rest of these requests (bench/RESULTS.md,
    "Tuning"). This is the one place that talks to the driver directly. The connection
    comes from the engine's pool through SQLAlchemy's public API, so the pool's size,
    ping, error wrapping and invalidation hold as for sessions; it is checked out at the
    first statement, as a session's is.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self.info: dict[Any, Any] = {}
        self._engine = engine
        self._connection: AsyncConnection | None = None
        self._driver: Any = None

    async def fetch(self, query: str, *args: Any) -> Sequence[Mapping[str, Any]]:
        records: Sequence[Mapping[str, Any]] = await self._run("fetch", query, args)
        return records

    async def fetchrow(self, query: str, *args: Any) -> Mapping[str, Any] | None:
        record: Mapping[str, Any] | None = await self._run("fetchrow", query, args)
        return record

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self._run("fetchval", query, args)

    async def execute(self, query: str, *args: Any) -> None:
        await self._run("execute", query, args)

    async def _run(self, method: str, query: str, args: tuple[Any, ...]) -> Any:
        if self._connection is None:
            # A failure to connect comes wrapped as for a session (a `DBAPIError`).
            self._connection = await self._engine.connect()
            self._driver = self._driver_of(self._connection)
        try:
            return await getattr(self._driver, method)(query, *args)
        except asyncpg.PostgresError as exc:
            # The server refused the statement; the connection is fine unless it is going away.
            if is_database_unavailable(exc):
                await self._connection.invalidate(exc)
            raise
        except BaseException as exc:
            # Cut short (cancelled, a broken socket, a client-side error): the connection may
            # be mid-protocol and must not serve another statement.
            await asyncio.shield(self._connection.invalidate(exc))
            raise

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[Self]:
        """The statements of the block in one transaction, committed as the block ends.

        For the unit of work of a hot path that is rarely more than one statement (a
        worker's finish that writes webhook events with it), without a session's cost.
        An error rolls the work back; a block cut short (cancelled) closes the connection
        instead, which the server rolls back, rather than hand it back mid-transaction.
        """
        await self.execute("BEGIN")
        try:
            yield self
        except Exception:
            if self._connection is not None and not self._connection.invalidated:
                with suppress(Exception):  # a failed ROLLBACK has closed the connection
                    await self.execute("ROLLBACK")
            raise
        except BaseException as exc:
            if self._connection is not None:
                await asyncio.shield(self._connection.invalidate(exc))
            raise
        await self.execute("COMMIT")

    @staticmethod
    def _driver_of(connection: AsyncConnection) -> Any:
        """The asyncpg connection under a connection just opened.

        Read from the sync connection, not by `get_raw_connection()`, which takes a
        greenlet to cover a reconnect that a connection just opened never needs: a
        third of the checkout's CPU (bench/RESULTS.md, "Tuning").
        """
        assert connection.sync_connection is not None
        return connection.sync_connection.connection.driver_connection

    async def close(self) -> None:
        if self._connection is not None:
            connection, self._connection = self._connection, None
            await connection.close()


@asynccontextmanager
async def statement_connection(engine: AsyncEngine) -> AsyncIterator[StatementConnection]:
    conn = StatementConnection(engine)
    try:
        yield conn
    finally:
        await conn.close()


class SessionStatements:
    """A session's transaction, seen as `Statements`: repository SQL inside a unit of work."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    @property
    def info(self) -> dict[Any, Any]:
        return self.session.info

    async def _execute(self, query: str, args: tuple[Any, ...]) -> CursorResult[Any]:
        connection = await self.session.connection()
        return await connection.exec_driver_sql(query, args)

    # Rows are read by column name, the keys of a `RowMapping`.
    async def fetch(self, query: str, *args: Any) -> Sequence[Mapping[str, Any]]:
        return cast(
            Sequence[Mapping[str, Any]], (await self._execute(query, args)).mappings().all()
        )

    async def fetchrow(self, query: str, *args: Any) -> Mapping[str, Any] | None:
        return cast(Mapping[str, Any] | None, (await self._execute(query, args)).mappings().first())

    async def fetchval(self, query: str, *args: Any) -> Any:
        return (await self._execute(query, args)).scalar()

    async def execute(self, query: str, *args: Any) -> None:
        await self._execute(query, args)
