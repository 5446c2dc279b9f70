"""The fleet's status for operators: `GET /api/v1/status`, an admin key's.

The dashboard polls it every few seconds, from every browser that has it open: one
API process reads the fleet at most once every `STATUS_TTL_S` (as often as `/metrics`
reads its gauges), and every request in between is answered from that read.
"""

import asyncio
import time
from collections.abc import Awaitable, Callable

from fastapi import APIRouter, Request

from api.auth import AdminCaller
from api.deps import statements
from api.metrics import FLEET_TTL_S
from api.openapi import problems
from shared.config import Settings
from shared.fleet import service as fleet
from shared.fleet.schemas import FleetStatus

router = APIRouter(tags=["operations"])

STATUS_TTL_S = FLEET_TTL_S


class StatusCache:
    """The last status this process read, and one read at a time."""

    def __init__(self, ttl_s: float = STATUS_TTL_S) -> None:
        self._ttl_s = ttl_s
        self._lock = asyncio.Lock()
        self._status: FleetStatus | None = None
        self._read_at = float("-inf")

    async def get(self, read: Callable[[], Awaitable[FleetStatus]]) -> FleetStatus:
        # Requests that arrive during a read wait for it rather than start their own.
        async with self._lock:
            if self._status is None or time.monotonic() - self._read_at >= self._ttl_s:
                self._status = await read()
                self._read_at = time.monotonic()
            return self._status


@router.get("/status", responses=problems())
async def fleet_status(caller: AdminCaller, request: Request) -> FleetStatus:
    """Every tenant's queue by priority, its oldest age, audits running, workers alive,
    the last hour's throughput by minute, failures by error code and batches in progress.

    An admin key's (a member's is refused with 403 `forbidden`). Read through indexes,
    at most every 5 s per API process. What the dashboard (`/dashboard`) shows.
    """
    settings: Settings = request.app.state.settings
    cache: StatusCache = request.app.state.status_cache

    async def read() -> FleetStatus:
        async with statements(request) as conn:
            return await fleet.read(conn, request.app.state.redis, queue_name=settings.queue_name)

    return await cache.get(read)
