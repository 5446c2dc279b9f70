"""How batches and their results are shown to clients."""

from shared.audits.schemas import Usage
from shared.batches.schemas import BatchRead
from shared.batches.summary import BatchSummary
from shared.spend.amounts import usd


def to_read(summary: BatchSummary) -> BatchRead:
    batch = summary.batch
    return BatchRead.model_validate(
        {
            "id": batch.id,
            "tenant": batch.tenant,
            "name": batch.name,
            "metadata": batch.metadata,
            "status": summary.status,
            "counts": summary.counts,
            "usage": Usage(
                prompt_tokens=summary.prompt_tokens,
                completion_tokens=summary.completion_tokens,
                total_tokens=summary.prompt_tokens + summary.completion_tokens,
                cost_usd=usd(summary.cost_usd),
            ),
            "max_cost_usd": usd(batch.max_cost_usd),
            "budget_exhausted_at": batch.budget_exhausted_at,
            "created_at": batch.created_at,
            "finished_at": summary.finished_at,
            "rerun_of": batch.rerun_of,
            "callback_url": batch.callback_url,
            "item_events": batch.item_events,
        }
    )
