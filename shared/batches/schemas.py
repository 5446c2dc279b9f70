"""Request and response bodies of the batches API."""

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.audits.priority import Priority
from shared.audits.schemas import AuditFields, Metadata, NoNul, Usage
from shared.webhooks.urls import CallbackUrl

MAX_BATCH_SIZE = 1000
# What the column keeps (shared/db.py, USD): ten digits before the point, ten after.
MAX_BUDGET_USD = 1_000_000_000
UsdAmount = Annotated[
    Decimal, Field(gt=0, le=MAX_BUDGET_USD, decimal_places=10, allow_inf_nan=False)
]

BatchStatus = Literal["running", "completed", "cancelled"]


class BatchCreate(BaseModel):
    """1 to 1,000 audits, accepted or rejected together."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, Field(min_length=1, max_length=200), NoNul] | None = None
    metadata: Metadata = Field(default_factory=dict)
    audits: Annotated[list[AuditFields], Field(min_length=1, max_length=MAX_BATCH_SIZE)]
    priority: Priority = Field(
        default=Priority.BULK,
        description="The priority of the audits that do not set their own.",
    )
    max_cost_usd: UsdAmount | None = Field(
        default=None,
        description="A budget in USD: once the batch's audits have spent it, those not "
        "started are cancelled (`budget_exhausted`) and call no model; those running "
        "finish, so the spend may pass it by what they cost. Its audits' models must "
        "have a price.",
    )
    callback_url: CallbackUrl | None = None
    item_events: bool = Field(
        default=False,
        description="Send each audit's own event (`audit.succeeded`, …) to `callback_url` "
        "too, not only the batch's.",
    )

    @model_validator(mode="after")
    def item_events_need_a_callback(self) -> Self:
        if self.item_events and self.callback_url is None:
            raise ValueError("`item_events` needs `callback_url`")
        return self


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
        "batch was cancelled or stopped on its budget (`budget_exhausted_at`), else "
        "`completed`."
    )
    counts: BatchCounts
    usage: Usage = Field(description="Its audits' usage, added up.")
    max_cost_usd: float | None = Field(description="Its budget in USD, if it has one.")
    budget_exhausted_at: datetime | None = Field(
        description="When its spend was found at its budget: it stopped there, and its "
        "audits not started were cancelled (`budget_exhausted`)."
    )
    created_at: datetime
    finished_at: datetime | None = Field(description="When its last audit ended.")
    rerun_of: UUID | None = Field(
        default=None, description="The batch this one re-runs (`POST /batches/{id}/rerun`)."
    )
    callback_url: str | None
    item_events: bool


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
