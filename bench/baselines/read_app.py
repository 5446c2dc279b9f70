"""Baseline of figure 5: one raw asyncpg `SELECT` by primary key, answered as JSON.

`GET /api/v1/audits/{id}` runs `SELECT * FROM audit WHERE id = $1` on an asyncpg
pool and returns the row as FastAPI renders a dict (404 when there is none).

`uvicorn bench.baselines.read_app:create_app --factory` with DATABASE_URL and REDIS_URL.
"""

from typing import Any
from uuid import UUID

from fastapi import FastAPI, HTTPException, Request

from bench.baselines.pool import health, lifespan

SELECT = "SELECT * FROM audit WHERE id = $1"


async def get_audit(audit_id: UUID, request: Request) -> dict[str, Any]:
    row = await request.app.state.db.fetchrow(SELECT, audit_id)
    if row is None:
        raise HTTPException(404, "no such audit")
    return dict(row)


def create_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    app.add_api_route("/api/v1/audits/{audit_id}", get_audit, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    return app
