"""How batches and their results are shown to clients."""

import json

from shared.audits.repository import ResultRow
from shared.audits.schemas import Usage
from shared.batches.schemas import BatchRead
from shared.batches.service import BatchSummary


def to_read(summary: BatchSummary) -> BatchRead:
    batch = summary.batch
    return BatchRead.model_validate(
        {
            "id": batch.id,
            "name": batch.name,
            "metadata": batch.metadata,
            "status": summary.status,
            "counts": summary.counts,
            "usage": Usage(
                prompt_tokens=summary.prompt_tokens,
                completion_tokens=summary.completion_tokens,
                total_tokens=summary.prompt_tokens + summary.completion_tokens,
            ),
            "created_at": batch.created_at,
            "finished_at": summary.finished_at,
        }
    )


def result_line(row: ResultRow) -> bytes:
    """One NDJSON line of GET /batches/{id}/results."""
    error = {"code": row.error_code, "message": row.error_message} if row.error_code else None
    usage = None
    if row.prompt_tokens is not None and row.completion_tokens is not None:
        usage = {
            "prompt_tokens": row.prompt_tokens,
            "completion_tokens": row.completion_tokens,
            "total_tokens": row.prompt_tokens + row.completion_tokens,
        }
    line = {
        "id": str(row.id),
        "subject": row.subject,
        "metadata": row.metadata,
        "status": row.status,
        "result": row.result,
        "error": error,
        "usage": usage,
    }
    # ASCII-only: raw U+2028, U+0085… would split the line for readers that use
    # `str.splitlines()` (requests' and httpx's `iter_lines` among them).
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"
