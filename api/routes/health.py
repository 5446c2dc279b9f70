"""Liveness and readiness probes."""

import asyncio
from collections.abc import Awaitable

import sqlalchemy as sa
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from shared import workers
from shared.config import Settings

router = APIRouter(prefix="/health", tags=["health"])

PROBE_TIMEOUT_S = 2.0


class Health(BaseModel):
    status: str
    checks: dict[str, str] = {}
    workers_alive: int | None = Field(
        default=None,
        description="Workers whose heartbeat is under 30 s old (null: Redis did not say). "
        "None alive keeps this 200: the API still serves, and queued audits wait.",
    )


@router.get("/live")
async def live() -> Health:
    """The process is up and serving."""
    return Health(status="ok")


async def _probe_database(request: Request) -> None:
    async with request.app.state.engine.connect() as connection:
        await connection.execute(sa.text("SELECT 1"))


async def _probe_redis(request: Request) -> None:
    await request.app.state.redis.ping()


async def _workers_alive(request: Request) -> int | None:
    settings: Settings = request.app.state.settings
    return await workers.alive_or_none(
        request.app.state.redis, settings.queue_name, timeout_s=PROBE_TIMEOUT_S
    )


async def _check(probe: Awaitable[None]) -> str:
    try:
        await asyncio.wait_for(probe, PROBE_TIMEOUT_S)
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@router.get(
    "/ready",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is down."}},
)
async def ready(request: Request) -> JSONResponse:
    """PostgreSQL and Redis answer, and how many workers are alive; a 503 names what is
    down."""
    database, redis, alive = await asyncio.gather(
        _check(_probe_database(request)), _check(_probe_redis(request)), _workers_alive(request)
    )
    checks = {"database": database, "redis": redis}
    healthy = all(state == "ok" for state in checks.values())
    body = Health(status="ok" if healthy else "unavailable", checks=checks, workers_alive=alive)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)
