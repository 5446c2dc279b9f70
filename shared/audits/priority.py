"""An audit's priority: what the scheduler serves first (docs/SCHEDULING.md).

The code, the SQL and the table's CHECK constraint spell priorities from here.
"""

from enum import StrEnum


class Priority(StrEnum):
    INTERACTIVE = "interactive"
    BULK = "bulk"


PRIORITY_CHECK = "priority IN (" + ", ".join(f"'{p}'" for p in Priority) + ")"
