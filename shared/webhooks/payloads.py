"""The body of an event: `{"type", "timestamp", "data"}`, `data` the resource as `GET`
returns it (an audit without its content) when it ended.

A batch's event is written with its body. An audit's is written with the audit's row
(`snapshot`) by the statement that ends it, and its body rendered here, from that row,
by the views `GET` uses, at its first try; the body is then kept, so every try sends
the same bytes.
"""

from datetime import datetime
from typing import Any

from shared.audits.repository import AuditRow
from shared.audits.views import to_read
from shared.webhooks.schemas import EventPayload
from shared.webhooks.vocabulary import EventType


def audit_body(kind: EventType, *, timestamp: datetime, snapshot: dict[str, Any]) -> str:
    """The body of an audit's event, from its row as the event kept it."""
    audit = AuditRow.of({**snapshot, "content": ""})
    return EventPayload(type=kind, timestamp=timestamp, data=to_read(audit)).model_dump_json()
