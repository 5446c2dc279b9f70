"""The one vocabulary of webhook events: their types and where their delivery stands.

The code, the SQL and the table's CHECK constraints spell them from here.
"""

from enum import StrEnum

from shared.audits.status import AuditStatus


class EventType(StrEnum):
    AUDIT_SUCCEEDED = "audit.succeeded"
    AUDIT_FAILED = "audit.failed"
    AUDIT_CANCELLED = "audit.cancelled"
    BATCH_COMPLETED = "batch.completed"
    BATCH_CANCELLED = "batch.cancelled"

    @classmethod
    def of_audit(cls, status: AuditStatus) -> "EventType":
        """The event of an audit that ended in `status` (a terminal one)."""
        return cls(f"audit.{status}")


class DeliveryStatus(StrEnum):
    PENDING = "pending"  # tried again at `next_attempt_at`
    DELIVERED = "delivered"  # a try got a 2xx
    GONE = "gone"  # a try got 410: the receiver asked for no more
    EXPIRED = "expired"  # WEBHOOK_MAX_AGE_S passed without a 2xx


def check_of(values: type[StrEnum], column: str) -> str:
    """`column IN ('a', 'b')`: the CHECK that holds a text column to an enum."""
    return f"{column} IN (" + ", ".join(f"'{value}'" for value in values) + ")"
