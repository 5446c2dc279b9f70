"""Keys and tenants' limits as PostgreSQL has them, cached while nothing changes.

Looking a key up on every request would cost each request a statement. Instead each
API process keeps what it looked up and LISTENs on `CHANGES_CHANNEL`, which every
change to `api_key` or `tenant` notifies as it commits (shared/tenants/repository.py):
a notification empties the cache, so a revoked key is refused from its next request
on, in every process. Nothing is cached while the listening connection is down:
lookups then go to the database each time, and the cache starts empty once it is back.
The listening connection goes to `DATABASE_DIRECT_URL` where it is set: a transaction
pooler (PgBouncer) cannot carry a LISTEN, so without it nothing is cached there at all.

A generation number guards the race of a lookup and a change: what a lookup read is
kept only if no notification arrived while it ran. Unknown keys are never cached, so
guessing fills no memory; the cache is emptied when it holds `MAX_ENTRIES`.

Two windows remain, both short: a request served between a revocation's commit and
the arrival of its notification (well under a millisecond on a healthy connection),
and a listening connection gone half-open, which sends nothing and says nothing until
its ping fails. An entry is kept at most `MAX_AGE_S` whatever the listener says, so the
second window is bounded too.
"""

import asyncio
import contextlib
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar
from uuid import UUID

import asyncpg
import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db import asyncpg_dsn, statement_connection
from shared.tenants import repository as tenants
from shared.tenants.repository import CHANGES_CHANNEL, KeyRow, TenantRow

log = structlog.get_logger("auditq.tenants")

T = TypeVar("T")

MAX_ENTRIES = 10_000
MAX_AGE_S = 5.0
# `last_used_at` is a hint for ops, not an audit trail: written at most this often.
TOUCH_EVERY_S = 60.0
RECONNECT_AFTER_S = 1.0
# How often the idle listening connection is checked: a half-open one says nothing.
PING_EVERY_S = 5.0


def _fresh(cached: tuple[T, float] | None) -> tuple[T, float] | None:
    """A cache entry young enough to serve, else None."""
    if cached is None or time.monotonic() - cached[1] > MAX_AGE_S:
        return None
    return cached


@dataclass(frozen=True, slots=True)
class TenantLimits:
    """A tenant's quotas: its own where `auditq tenant set` gave them, else the settings';
    whether it can use callbacks (it has a secret to sign webhooks with), and its monthly
    budget in USD, if it has one."""

    max_queued: int | None
    submit_rpm: int | None
    signs_webhooks: bool = False
    monthly_budget_usd: Decimal | None = None

    @classmethod
    def of(cls, row: TenantRow | None, settings: Settings) -> "TenantLimits":
        signs = settings.webhook_secret is not None
        if row is None:
            return cls(settings.tenant_max_queued, settings.tenant_submit_rpm, signs)
        return cls(
            settings.tenant_max_queued if row.max_queued is None else row.max_queued,
            settings.tenant_submit_rpm if row.submit_rpm is None else row.submit_rpm,
            signs or row.webhook_secret is not None,
            row.monthly_budget_usd,
        )


class Directory:
    """The keys and tenants one API process has looked up; `start` it, then `stop` it."""

    def __init__(self, engine: AsyncEngine, settings: Settings) -> None:
        self._engine = engine
        self._settings = settings
        # name -> (what PostgreSQL said, when: monotonic seconds)
        self._keys: dict[str, tuple[KeyRow, float]] = {}
        self._tenants: dict[str, tuple[TenantRow | None, float]] = {}
        self._touched: dict[UUID, float] = {}
        self._generation = 0
        self.listening = False
        self._task: asyncio.Task[None] | None = None

    @property
    def generation(self) -> int:
        """How many times the cache was emptied: a change was notified, or the listener
        came or went."""
        return self._generation

    async def start(self) -> None:
        if self._settings.database_pool_mode == "transaction" and not (
            self._settings.database_direct_url
        ):
            # A LISTEN sent through a transaction pooler lands on whichever server connection
            # it is lent, and its notifications go astray: a revocation would go unnoticed
            # for up to MAX_AGE_S. Without a direct connection, nothing is cached.
            log.warning(
                "tenants.not_listening",
                detail="DATABASE_POOL_MODE=transaction without DATABASE_DIRECT_URL: "
                "keys and tenants are read from the database on every request",
            )
            return
        self._task = asyncio.create_task(self._listen_forever(), name="tenants-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def key(self, secret_hash: str) -> KeyRow | None:
        """The unrevoked key with this digest, if any."""
        if (cached := _fresh(self._keys.get(secret_hash))) is not None:
            return cached[0]
        since = self._generation
        async with statement_connection(self._engine) as conn:
            row = await tenants.active_key(conn, secret_hash)
        if row is not None:
            self._keep(self._keys, secret_hash, row, since=since)
        return row

    async def limits(self, tenant: str) -> TenantLimits:
        if (cached := _fresh(self._tenants.get(tenant))) is not None:
            return TenantLimits.of(cached[0], self._settings)
        since = self._generation
        async with statement_connection(self._engine) as conn:
            row = await tenants.get_tenant(conn, tenant)
        self._keep(self._tenants, tenant, row, since=since)
        return TenantLimits.of(row, self._settings)

    async def note_use(self, key: KeyRow) -> None:
        """Write the key's `last_used_at`, at most every `TOUCH_EVERY_S` per process.

        Best effort: a hint for ops must not fail the request it comes with.
        """
        now = time.monotonic()
        if now - self._touched.get(key.id, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
            return
        self._touched[key.id] = now
        try:
            async with statement_connection(self._engine) as conn:
                await tenants.touch(conn, key.id)
        except Exception as exc:
            log.warning("key_use_not_recorded", key=key.prefix, error=type(exc).__name__)

    def _keep(self, cache: dict[str, Any], name: str, value: Any, *, since: int) -> None:
        # A change notified while the lookup ran may be newer than what it read.
        if not self.listening or since != self._generation:
            return
        if len(cache) >= MAX_ENTRIES:
            cache.clear()
        cache[name] = (value, time.monotonic())

    def forget(self, *_: object) -> None:
        """Empty the cache (a change was notified, or the listener came or went)."""
        self._generation += 1
        self._keys.clear()
        self._tenants.clear()

    def _lost(self, *_: object) -> None:
        """The listening connection closed: nothing cached can be trusted from now on."""
        self.listening = False
        self.forget()

    async def _listen_forever(self) -> None:
        # LISTEN belongs to a session: past a transaction pooler, straight to PostgreSQL.
        dsn = asyncpg_dsn(self._settings.direct_database_url)
        while True:
            try:
                await self._listen(dsn)
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
                log.warning("tenants.listener_lost", error=str(exc))
            except Exception:
                # Whatever it was, listening again beats looking every key up for good.
                log.exception("tenants.listener_failed")
            finally:
                self.listening = False
                self.forget()
            await asyncio.sleep(RECONNECT_AFTER_S)

    async def _listen(self, dsn: str) -> None:
        conn = await asyncpg.connect(dsn, timeout=5)
        try:
            await conn.add_listener(CHANGES_CHANNEL, self.forget)
            conn.add_termination_listener(self._lost)
            self.forget()
            self.listening = True
            while not conn.is_closed():
                await asyncio.sleep(PING_EVERY_S)
                await conn.fetchval("SELECT 1", timeout=PING_EVERY_S)
        finally:
            await conn.close(timeout=1)
