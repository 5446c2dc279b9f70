"""The body of an event: `{"type", "timestamp", "data"}`, `data` the resource as `GET`
returns it (an audit without its content) when it ended.

A batch's event is written with its body. An audit's is written with the audit's row
(`snapshot`) by the statement that ends it, and its body rendered here, from that row,
by the views `GET` uses, at its first try; the body is then kept, so every try sends
the same bytes. A row written by another version of auditq (a rolling deploy, a
migration between the end and the try) is read by the columns this one knows: one it
does not know is left out, one it misses is null, and a row that cannot be rendered at
all is a failed try (shared/webhooks/delivery.py).
"""

from datetime import datetime
from typing import Any

from shared.audits.repository import COLUMNS, AuditRow
from shared.audits.views import to_read
from shared.webhooks.schemas import EventPayload
from shared.webhooks.vocabulary import EventType


def audit_body(kind: EventType, *, timestamp: datetime, snapshot: dict[str, Any]) -> str:
    """The body of an audit's event, from its row as the event kept it."""
    audit = AuditRow.of({**{name: snapshot.get(name) for name in COLUMNS}, "content": ""})
    return EventPayload(type=kind, timestamp=timestamp, data=to_read(audit)).model_dump_json()
