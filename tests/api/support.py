"""Helpers of the audits API tests: submitting, and reading what the API left behind."""

import json
from typing import Any

import pytest
from arq.connections import ArqRedis
from arq.constants import job_key_prefix
from arq.jobs import deserialize_job
from httpx import AsyncClient

from shared.config import Settings
from tests.factories import audit_request
from tests.fixtures.jobs import queued_job_ids


async def submit(client: AsyncClient, **overrides: Any) -> dict[str, Any]:
    """`POST /audits` with a valid body (varied by `overrides`); the accepted audit."""
    response = await client.post("/audits", json=audit_request(**overrides))
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


def log_events(capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    """The JSON log lines an app built inside the test wrote to stdout."""
    lines = capsys.readouterr().out.splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


async def assert_job_queued(redis: ArqRedis, settings: Settings, audit_id: str) -> None:
    """`run_audit(<id>)` is in Redis under `audit:<id>` and waits in this app's queue."""
    job_id = f"audit:{audit_id}"
    raw = await redis.get(job_key_prefix + job_id)
    assert raw is not None, f"no job {job_id}"
    job = deserialize_job(raw)
    assert (job.function, job.args) == ("run_audit", (audit_id,))
    assert job_id in await queued_job_ids(redis, settings)
