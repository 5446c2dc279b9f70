"""`GET /api/v1/status`: what an operator watches, in one document."""

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from shared.audits.priority import Priority
from shared.batches.schemas import BatchRead


class QueuedCount(BaseModel):
    priority: Priority
    tenant: str
    queued: int


class Queue(BaseModel):
    queued: int = Field(description="Audits queued, of every priority and tenant.")
    by_priority_and_tenant: list[QueuedCount] = Field(
        description="Audits queued by priority and tenant; a pair with none is left out."
    )
    oldest_age_seconds: dict[Priority, float] = Field(
        description="Age of the oldest queued audit of each priority; 0 with none queued."
    )


class Finished(BaseModel):
    """Audits that ended, by how they ended."""

    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class FinishedMinute(Finished):
    minute: datetime = Field(description="The start of the minute of the clock.")


class Throughput(BaseModel):
    last_5_minutes: Finished
    last_hour: Finished = Field(description="What ended in the minutes of `per_minute`.")
    per_minute: list[FinishedMinute] = Field(
        description="The last 60 minutes of the clock, oldest first; the last one is the "
        "minute in progress."
    )


class FailedAudit(BaseModel):
    id: UUID
    tenant: str
    subject: str
    finished_at: datetime


class FailureCount(BaseModel):
    code: str = Field(description="The failed audits' `error.code`.")
    last_hour: int
    last_5_minutes: int
    latest: list[FailedAudit] = Field(
        description="Up to 5 of the hour's latest 100 failures with this code, newest first."
    )


class FleetStatus(BaseModel):
    """The whole deployment, now: every tenant's audits, read through indexes."""

    generated_at: datetime = Field(description="PostgreSQL's clock when it was read.")
    queue: Queue
    audits_running: int
    workers_alive: int | None = Field(
        description="Workers whose heartbeat is under 30 s old (null: Redis did not say)."
    )
    throughput: Throughput
    failures: list[FailureCount] = Field(
        description="Failed audits of the last hour by error code, the most frequent first."
    )
    batches_running: int = Field(description="Batches with an audit queued or running.")
    batches: list[BatchRead] = Field(
        description="Up to 20 batches in progress, those running longest first."
    )
