"""What a batch's audits say about it: counts by status, usage, status, finish time.

Derived on every read, never stored, so they cannot drift. Apart from the service so
that what reads a batch's state (its views, the webhook outbox) needs nothing else of it.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from uuid import UUID

from shared.audits import repository as audits
from shared.audits.repository import BatchTally
from shared.audits.status import UNFINISHED
from shared.batches.repository import BatchRow
from shared.batches.schemas import BatchCounts, BatchStatus
from shared.db import Statements


@dataclass(frozen=True)
class BatchSummary:
    """A batch with what its audits say about it."""

    batch: BatchRow
    counts: BatchCounts
    prompt_tokens: int
    completion_tokens: int
    # None when an audit that used tokens has no price: the total is not known.
    cost_usd: Decimal | None
    last_finished_at: datetime | None

    @property
    def status(self) -> BatchStatus:
        if any(getattr(self.counts, status) for status in UNFINISHED):
            return "running"
        return "cancelled" if self.batch.cancelled_at else "completed"

    @property
    def finished_at(self) -> datetime | None:
        return None if self.status == "running" else self.last_finished_at


async def summarize(conn: Statements, batch: BatchRow) -> BatchSummary:
    return (await summaries(conn, [batch]))[0]


async def summaries(conn: Statements, rows: Sequence[BatchRow]) -> list[BatchSummary]:
    """Counts, usage and last finish of several batches, in one grouped query."""
    tallies: dict[UUID, list[BatchTally]] = {row.id: [] for row in rows}
    for tally in await audits.tally_batches(conn, list(tallies)):
        tallies[tally.batch_id].append(tally)
    return [_summary(row, tallies[row.id]) for row in rows]


def _summary(batch: BatchRow, tallies: list[BatchTally]) -> BatchSummary:
    counts = {str(t.status): t.count for t in tallies}
    finished = [t.last_finished_at for t in tallies if t.last_finished_at is not None]
    return BatchSummary(
        batch=batch,
        counts=BatchCounts(**counts, total=sum(counts.values())),
        prompt_tokens=sum(t.prompt_tokens for t in tallies),
        completion_tokens=sum(t.completion_tokens for t in tallies),
        cost_usd=_total_cost(tallies),
        last_finished_at=max(finished, default=None),
    )


def _total_cost(tallies: list[BatchTally]) -> Decimal | None:
    costs = [tally.cost_usd for tally in tallies]
    return None if None in costs else sum((c for c in costs if c is not None), Decimal(0))
