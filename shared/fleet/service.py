"""The fleet's status: queue, workers, the last hour's work, failures and batches.

Every figure is read through an index, never by counting the whole `audit` table:
the queued and running audits (`ix_audit_unfinished`, as `GET /metrics` reads them,
with the same statements), what ended in the last hour (`ix_audit_finished`), and the
audits of at most `BATCHES_SHOWN` batches. Its cost grows with the audits queued and
those that ended within the hour, not with the table: 100 to 200 ms with 90,000 audits
ended in the hour in a table of 1,000,000 (2 cores), most of it the hour's scan.
Windows are measured on PostgreSQL's clock, the one that stamped `finished_at`.
"""

from collections import Counter, defaultdict
from collections.abc import Iterable
from datetime import datetime, timedelta

from redis.asyncio import Redis

from shared import workers
from shared.audits import repository as audits
from shared.audits.priority import Priority
from shared.audits.repository import Failure, FinishedTally, Fleet
from shared.audits.status import AuditStatus
from shared.batches import service as batches
from shared.batches.views import to_read
from shared.db import Statements
from shared.fleet.schemas import (
    FailedAudit,
    FailureCount,
    Finished,
    FinishedMinute,
    FleetStatus,
    Queue,
    QueuedCount,
    Throughput,
)

WINDOW_MINUTES = 60
RECENT = timedelta(minutes=5)
# Links to the latest failures of each code, among the window's latest `LATEST_FAILURES`:
# reading those stops early, where every failure of the hour would be a second scan of
# the window (a code whose failures are all older has its count, and no link).
LATEST_FAILURES = 100
LATEST_FAILURES_PER_CODE = 5
BATCHES_SHOWN = 20
REDIS_TIMEOUT_S = 2.0
# A failed audit always has a code; one from before codes were recorded shows as this.
NO_CODE = "unknown"


async def read(conn: Statements, redis: Redis, *, queue_name: str) -> FleetStatus:
    """The fleet as PostgreSQL and the workers' heartbeats have it now."""
    now = await audits.clock(conn)
    since = now.replace(second=0, microsecond=0) - timedelta(minutes=WINDOW_MINUTES - 1)
    fleet = await audits.fleet(conn)
    tallies = await audits.finished_by_minute(conn, since=since, recent=now - RECENT)
    failures = await audits.latest_failures(conn, since=since, limit=LATEST_FAILURES)
    in_progress = await batches.in_progress(conn, limit=BATCHES_SHOWN)
    return FleetStatus(
        generated_at=now,
        queue=_queue(fleet, now),
        audits_running=fleet.running,
        workers_alive=await workers.alive_or_none(redis, queue_name, timeout_s=REDIS_TIMEOUT_S),
        throughput=_throughput(tallies, since),
        failures=_failures(tallies, failures),
        batches_running=fleet.batches_running,
        batches=[to_read(summary) for summary in in_progress],
    )


def _queue(fleet: Fleet, now: datetime) -> Queue:
    oldest = {
        priority: (now - at).total_seconds() if (at := fleet.oldest_queued_at.get(priority)) else 0
        for priority in Priority
    }
    return Queue(
        queued=sum(fleet.queued.values()),
        by_priority_and_tenant=[
            QueuedCount(priority=priority, tenant=tenant, queued=queued)
            for (priority, tenant), queued in sorted(fleet.queued.items())
        ],
        oldest_age_seconds={priority: max(0.0, age) for priority, age in oldest.items()},
    )


def _finished(counts: Iterable[tuple[AuditStatus, int]]) -> dict[str, int]:
    by_status: dict[str, int] = defaultdict(int)
    for status, count in counts:
        by_status[status] += count
    return {**by_status, "total": sum(by_status.values())}


def _throughput(tallies: list[FinishedTally], since: datetime) -> Throughput:
    by_minute: dict[datetime, list[FinishedTally]] = defaultdict(list)
    for tally in tallies:
        by_minute[tally.minute].append(tally)
    minutes = [since + timedelta(minutes=n) for n in range(WINDOW_MINUTES)]
    return Throughput(
        last_5_minutes=Finished(**_finished((t.status, t.recent) for t in tallies)),
        last_hour=Finished(**_finished((t.status, t.count) for t in tallies)),
        per_minute=[
            FinishedMinute(
                minute=minute, **_finished((t.status, t.count) for t in by_minute[minute])
            )
            for minute in minutes
        ],
    )


def _failures(tallies: list[FinishedTally], latest: list[Failure]) -> list[FailureCount]:
    hour: Counter[str] = Counter()
    recent: Counter[str] = Counter()
    for tally in tallies:
        if tally.status is AuditStatus.FAILED:
            hour[tally.error_code or NO_CODE] += tally.count
            recent[tally.error_code or NO_CODE] += tally.recent
    audits_of: dict[str, list[FailedAudit]] = defaultdict(list)
    for failure in latest:
        shown = audits_of[failure.error_code or NO_CODE]
        if len(shown) < LATEST_FAILURES_PER_CODE:
            shown.append(FailedAudit.model_validate(failure, from_attributes=True))
    return [
        FailureCount(
            code=code, last_hour=count, last_5_minutes=recent[code], latest=audits_of[code]
        )
        for code, count in sorted(hour.items(), key=lambda item: (-item[1], item[0]))
    ]
