"""structlog configured for JSON lines, with context carried in contextvars.

Every event of a request carries its `request_id`; every event of a job carries
the `audit_id` and the `request_id` of the request that created the audit.

auditq's own events are rendered by structlog and written straight to stdout: the
route through the standard library's `logging` (a record, a handler lock, a
formatter) cost four times as much CPU per event, and the API logs one per
request. The libraries' records still go through `logging`, rendered alike.
"""

import logging
import sys
import threading
from typing import TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

_LEVELS = logging.getLevelNamesMapping()
# The level of each method of structlog's bound loggers.
_METHOD_LEVELS = {**{name.lower(): value for name, value in _LEVELS.items()}, "exception": 40}


class _Configured:
    """The level and the stream set by `configure_logging`.

    Read per event, so loggers cached before a reconfiguration obey it; the stream is
    the `sys.stdout` of that moment, as a `logging.StreamHandler` would keep it.
    """

    level = logging.INFO
    stream: TextIO = sys.stdout


def _below_threshold(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    if _METHOD_LEVELS.get(method_name, logging.INFO) < _Configured.level:
        raise structlog.DropEvent
    return event_dict


class _StdoutLogger:
    """Writes each rendered event as one line to the configured stream."""

    _lock = threading.Lock()

    def __init__(self, name: str | None = None) -> None:
        self.name = name

    def msg(self, message: str) -> None:
        stream = _Configured.stream
        with self._lock:
            stream.write(message + "\n")
            stream.flush()

    debug = info = warning = error = critical = exception = msg


def _own_processors(shared: list[Processor]) -> list[Processor]:
    return [
        _below_threshold,
        *shared,
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(),
    ]


def configure_logging(level: str = "INFO") -> None:
    """JSON lines on stdout for auditq's own events and for the libraries' logs."""
    _Configured.level = _LEVELS[level.upper()]
    _Configured.stream = sys.stdout
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # The same list object, refilled: loggers cached by an earlier configuration hold it.
    processors: list[Processor] = structlog.get_config()["processors"]
    processors[:] = _own_processors(shared)
    structlog.configure(
        processors=processors,
        logger_factory=_StdoutLogger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=True,
    )
    _route_library_logs(shared, level)


def _route_library_logs(shared: list[Processor], level: str) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their own handlers would print plain text beside the JSON lines.
    for name in ("arq", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # One line per HTTP call to the model repeats the job's own events.
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's access log would repeat the API's own `request` event.
    logging.getLogger("uvicorn.access").disabled = True
