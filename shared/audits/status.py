"""The one vocabulary of an audit's status.

The code, the SQL and the table's CHECK constraint all spell statuses from here
(tests/test_migrations.py holds the migrated constraint to this enum).
"""

from collections.abc import Iterable
from enum import StrEnum


class AuditStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


UNFINISHED = frozenset({AuditStatus.QUEUED, AuditStatus.RUNNING})
TERMINAL = frozenset({AuditStatus.SUCCEEDED, AuditStatus.FAILED, AuditStatus.CANCELLED})
# What `POST /audits/{id}/retry` queues again.
RETRYABLE = frozenset({AuditStatus.FAILED, AuditStatus.CANCELLED})


def sql_list(statuses: Iterable[AuditStatus]) -> str:
    """`('queued', 'running')`: statuses as a SQL list, in the enum's order."""
    wanted = set(statuses)
    return "(" + ", ".join(f"'{status}'" for status in AuditStatus if status in wanted) + ")"
