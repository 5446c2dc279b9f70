"""The arq worker's settings, run by `python -m worker` (the Procfile's, worker/runner.py).

`arq --check worker.settings.WorkerSettings` reads them for compose's health check.
arq's plain worker would not read the fair queue (docs/SCHEDULING.md).

`worker_options(settings)` builds the same options for tests and benchmarks,
which run a `Worker` in-process with settings of their own.
"""

from typing import Any

from arq import cron, func

from shared.config import Settings, get_settings
from shared.queue import RUN_AUDIT, redis_settings
from worker.context import shutdown, startup
from worker.reconciler import reconcile
from worker.retention import purge_expired
from worker.tasks import run_audit
from worker.timing import JobTiming

RECONCILE_SECONDS = {0, 15, 30, 45}
RETENTION_MINUTE = 7  # hourly, off the top of the hour
# arq counts every run of a job id, duplicates and deferred retries included;
# the audit's own `attempts` is the real budget, so arq's cap only stops a loop.
ARQ_MAX_TRIES_FACTOR = 3


def worker_options(settings: Settings) -> dict[str, Any]:
    timing = JobTiming.from_settings(settings)
    return {
        "functions": [
            func(
                run_audit,  # type: ignore[arg-type]
                name=RUN_AUDIT,
                timeout=timing.job_timeout_s,
                max_tries=settings.max_attempts * ARQ_MAX_TRIES_FACTOR,
            )
        ],
        "cron_jobs": [
            cron(reconcile, second=RECONCILE_SECONDS, unique=True, run_at_startup=True),  # type: ignore[arg-type]
            cron(purge_expired, minute=RETENTION_MINUTE, second=0, unique=True),  # type: ignore[arg-type]
        ],
        "on_startup": startup,
        "on_shutdown": shutdown,
        "ctx": {"settings": settings},
        "redis_settings": redis_settings(settings),
        "queue_name": settings.queue_name,
        "max_jobs": settings.worker_concurrency,
        "job_timeout": timing.job_timeout_s,
        "keep_result": 0,
        "allow_abort_jobs": True,
        "health_check_interval": 15,
        # On SIGTERM, running audits get this long to finish; the rest are
        # cancelled, handed back to `queued` and re-run by arq.
        "job_completion_wait": 25,
        "poll_delay": 0.1,
        "max_burst_jobs": -1,
    }


def __getattr__(name: str) -> Any:
    """`WorkerSettings`, for `arq worker.settings.WorkerSettings`: arq accepts a dict of
    `Worker` arguments. Built when arq asks for it, so importing this module reads no
    settings."""
    if name == "WorkerSettings":
        return worker_options(get_settings())
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
