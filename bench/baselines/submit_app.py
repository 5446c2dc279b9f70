"""Baseline of figure 1: the floor of a validated, durable, queued submit.

`POST /api/v1/audits` validates the body with auditq's own `AuditCreate`, builds
the same row (`shared.audits.service.new_audit`), writes it with one raw asyncpg
`INSERT` (autocommit: durable when it returns, with the server's own fsync and
synchronous_commit) and queues it with one arq `enqueue_job`, job id
`audit:<id>` as auditq's. No ORM, no idempotency lookup, no request log, no
middleware; it answers the id and status only.

`uvicorn bench.baselines.submit_app:create_app --factory` with DATABASE_URL,
REDIS_URL and QUEUE_NAME in the environment.
"""

import os
from dataclasses import asdict
from functools import cache
from typing import Any

from fastapi import FastAPI, Request

from bench.baselines.pool import health, lifespan
from shared.audits.schemas import AuditCreate
from shared.audits.service import ResolvedCriteria, new_audit
from shared.config import Settings
from shared.tenants.caller import DEFAULT_TENANT

SETTINGS = Settings()


@cache
def _insert(columns: tuple[str, ...]) -> str:
    values = ", ".join(f"${i}" for i in range(1, len(columns) + 1))
    return f"INSERT INTO audit ({', '.join(columns)}) VALUES ({values})"


async def create_audit(body: AuditCreate, request: Request) -> dict[str, Any]:
    criteria = ResolvedCriteria(criteria=list(body.criteria or []))
    row = asdict(new_audit(body, tenant=DEFAULT_TENANT, settings=SETTINGS, criteria=criteria))
    await request.app.state.db.execute(_insert(tuple(row)), *row.values())
    audit_id = str(row["id"])
    await request.app.state.redis.enqueue_job(
        "run_audit", audit_id, _job_id=f"audit:{audit_id}", _queue_name=request.app.state.queue
    )
    return {"id": audit_id, "status": "queued"}


def create_app() -> FastAPI:
    app = FastAPI(lifespan=lifespan)
    app.state.queue = os.environ["QUEUE_NAME"]
    app.add_api_route("/api/v1/audits", create_audit, methods=["POST"], status_code=202)
    app.add_api_route("/health", health, methods=["GET"])
    return app
