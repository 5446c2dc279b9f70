"""`python -m api`: the Procfile's `web`, `WEB_CONCURRENCY` uvicorn processes on `PORT`.

It is `uvicorn api.app:create_app --factory --http api.protocol:HttpWithDeadlines
--host 0.0.0.0 --port $PORT --workers $WEB_CONCURRENCY`, and one thing more: several
processes on one port share their request metrics. A scrape reaches one process, a
different one each time, so each process's own counts would jump about from scrape to
scrape. Instead every process writes its counts to a directory they share
(prometheus-client's multiprocess mode), and whichever process answers `GET /metrics`
adds them all up (api/metrics.py). Two: where `SECRET_KEY` is unset, they share one
random key. The directory is made here, empty, before any process
starts, and removed when they have all stopped; it belongs to these processes alone, so
a `PROMETHEUS_MULTIPROC_DIR` in the environment (a worker's, say) is not shared with them.
"""

import os
import secrets
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager

import structlog
import uvicorn

from shared.config import Settings, get_settings
from shared.logging import configure_logging

# prometheus-client's variable, read as it is imported: set before the app is.
MULTIPROCESS_DIR = "PROMETHEUS_MULTIPROC_DIR"


@contextmanager
def shared_metrics(processes: int) -> Iterator[None]:
    """Multiprocess metrics in a fresh directory while `processes` > 1; none for one."""
    os.environ.pop(MULTIPROCESS_DIR, None)
    if processes == 1:
        yield
        return
    directory = tempfile.mkdtemp(prefix="auditq-web-metrics-")
    os.environ[MULTIPROCESS_DIR] = directory
    try:
        yield
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def share_a_secret_key(settings: Settings) -> None:
    """Without `SECRET_KEY`, one random key for all the processes, not one each: a cursor
    one process signed is then good at the next, whichever answers (shared/secret.py)."""
    if settings.web_concurrency == 1 or settings.secret_key is not None:
        return
    os.environ["SECRET_KEY"] = secrets.token_urlsafe(32)
    configure_logging(settings.log_level, settings.log_format)
    structlog.get_logger("auditq.secret").warning(
        "secret_key_missing",
        detail="SECRET_KEY is unset: the WEB_CONCURRENCY processes share a random key, "
        "so cursors do not survive a restart or work on other API hosts; set SECRET_KEY",
    )


def main() -> None:
    settings = get_settings()
    share_a_secret_key(settings)
    with shared_metrics(settings.web_concurrency):
        uvicorn.run(
            "api.app:create_app",
            factory=True,
            http="api.protocol:HttpWithDeadlines",
            host="0.0.0.0",  # every interface, as a platform routes to PORT
            port=settings.port,
            workers=settings.web_concurrency,
        )


if __name__ == "__main__":
    main()
