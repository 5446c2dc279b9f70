"""Request and response bodies of the batches API."""

from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field

from shared.audits.priority import Priority
from shared.audits.schemas import AuditCreate, Metadata, NoNul, Usage

MAX_BATCH_SIZE = 1000

BatchStatus = Literal["running", "completed", "cancelled"]


class BatchCreate(BaseModel):
    """1 to 1,000 audits, accepted or rejected together."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200), NoNul] | None = None
    metadata: Metadata = Field(default_factory=dict)
    audits: Annotated[list[AuditCreate], Field(min_length=1, max_length=MAX_BATCH_SIZE)]
    priority: Priority = Field(
        default=Priority.BULK,
        description="The priority of the audits that do not set their own.",
    )


class BatchCounts(BaseModel):
    queued: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    cancelled: int = 0
    total: int = 0


class BatchRead(BaseModel):
    id: UUID
    tenant: str = Field(description="The tenant that owns it (`default` without keys).")
    name: str | None
    metadata: dict[str, Any]
    status: BatchStatus = Field(
        description="`running` while any audit is queued or running; then `cancelled` if the "
        "batch was cancelled, else `completed`."
    )
    counts: BatchCounts
    usage: Usage
    created_at: datetime
    finished_at: datetime | None = Field(description="When its last audit ended.")
    rerun_of: UUID | None = Field(
        default=None, description="The batch this one re-runs (`POST /batches/{id}/rerun`)."
    )


class BatchPage(BaseModel):
    items: list[BatchRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )


class RequeuedCounts(BaseModel):
    """Audits of a batch queued again, by the status they had."""

    failed: int = 0
    cancelled: int = 0


class BatchRetried(BaseModel):
    requeued: RequeuedCounts
    batch: BatchRead
