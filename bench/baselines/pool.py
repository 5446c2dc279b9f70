"""The baselines' resources: an asyncpg pool sized like auditq's engine, and an arq pool."""

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from arq import create_pool
from arq.connections import RedisSettings
from fastapi import FastAPI
from sqlalchemy.engine import make_url

# Up to 20 connections, as auditq's API engine keeps (shared/db.py, pool_size=20, no overflow).
MIN_CONNECTIONS, MAX_CONNECTIONS = 10, 20


async def _init(connection: asyncpg.Connection) -> None:
    for type_ in ("json", "jsonb"):
        await connection.set_type_codec(
            type_, encoder=json.dumps, decoder=json.loads, schema="pg_catalog"
        )


def _dsn() -> str:
    url = make_url(os.environ["DATABASE_URL"]).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.db = await asyncpg.create_pool(
        _dsn(), min_size=MIN_CONNECTIONS, max_size=MAX_CONNECTIONS, init=_init
    )
    app.state.redis = await create_pool(RedisSettings.from_dsn(os.environ["REDIS_URL"]))
    try:
        yield
    finally:
        await app.state.redis.aclose()
        await app.state.db.close()


def health() -> dict[str, str]:
    """A trivial endpoint: the load generator's ceiling is measured against it."""
    return {"status": "ok"}
