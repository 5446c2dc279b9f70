"""A batch's results as NDJSON, read in chunks, each on a connection only while it is read.

A stream either ends with the batch's last audit, or with one final line that says it
was cut short and where to resume: `{"code": "results_interrupted", "detail": …,
"after": <the last audit id sent, or null>}` (it has no `id`, every result line has
one). `?after=<that id>` resumes right after it. A stream is never cut silently.
"""

import json
from collections.abc import AsyncIterator, Sequence
from uuid import UUID

import structlog
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits.repository import ResultLine
from shared.batches.service import results_after
from shared.db import statement_connection

log = structlog.get_logger("auditq.results")

# Rows per query. A chunk is serialised in one go on the event loop, between two awaits:
# small enough that a submit waiting behind the streams in progress waits a few ms each.
CHUNK = 100


# Raw, these split a line for readers that use `str.splitlines()` (requests' and httpx's
# `iter_lines` among them); PostgreSQL leaves them as they are, JSON allows them escaped.
_LINE_BREAKS_IN_STRINGS = str.maketrans(
    {"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"}
)


def _ndjson(rows: Sequence[ResultLine]) -> bytes:
    text = "\n".join(row.line for row in rows).translate(_LINE_BREAKS_IN_STRINGS)
    return text.encode() + b"\n"


def interrupted_line(after: UUID | None) -> bytes:
    """The last line of a stream cut short: where to resume (`?after=`)."""
    resume = f"resume with ?after={after}" if after else "start again"
    line = {
        "code": "results_interrupted",
        "detail": f"The results could not be read to the end; {resume}.",
        "after": str(after) if after else None,
    }
    return json.dumps(line, separators=(",", ":")).encode() + b"\n"


async def stream_results(
    engine: AsyncEngine, *, batch_id: UUID, first: Sequence[ResultLine], chunk: int = CHUNK
) -> AsyncIterator[bytes]:
    """The lines of `first` (read while the request was answered), then of the next chunks."""
    rows: Sequence[ResultLine] | None = first
    while rows:
        yield _ndjson(rows)
        if len(rows) < chunk:
            return
        after = rows[-1].id
        try:
            async with statement_connection(engine) as conn:
                rows = await results_after(conn, batch_id=batch_id, after=after, limit=chunk)
        except Exception:
            # Whatever it was (PostgreSQL away, the pool exhausted, a bug), the client is
            # told where it stopped rather than left with a short file that looks whole.
            log.exception("results_interrupted", batch_id=str(batch_id), after=str(after))
            yield interrupted_line(after)
            return
        if rows is None:  # the audit just sent was deleted since (retention): no resuming
            yield interrupted_line(None)
            return
