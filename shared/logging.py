"""structlog configured for JSON lines (or for people), with context carried in contextvars.

Every event of a request carries its `request_id`; every event of a job carries
the `audit_id` and the `request_id` of the request that created the audit.

auditq's own events are rendered by structlog and written straight to stdout: the
route through the standard library's `logging` (a record, a handler lock, a
formatter) cost four times as much CPU per event, and the API logs one per
request. The libraries' records still go through `logging`, rendered alike.

`LOG_FORMAT` picks the rendering: `json` (one object per line, for machines),
`console` (aligned, coloured lines for people; `NO_COLOR` turns colours off), or
`auto`, the default: `console` when stdout is a terminal, else `json`. Text stays
UTF-8 in both: a `◆` in an event is written as `◆`, not `\u25c6`.
"""

import io
import logging
import os
import sys
import threading
from typing import Literal, TextIO

import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

LogFormat = Literal["auto", "json", "console"]

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


def _for_people(log_format: LogFormat) -> bool:
    if log_format == "auto":
        return sys.stdout.isatty()
    return log_format == "console"


def _renderer(log_format: LogFormat) -> list[Processor]:
    """The last processors: exceptions formatted, then the line rendered."""
    if _for_people(log_format):
        colours = not os.environ.get("NO_COLOR")
        # The console renderer formats exceptions itself, with their traceback; plainly:
        # rich's tracebacks show each frame's locals, where keys and settings live.
        return [
            structlog.dev.ConsoleRenderer(
                colors=colours,
                sort_keys=False,
                exception_formatter=structlog.dev.plain_traceback,
            )
        ]
    return [
        structlog.processors.format_exc_info,
        structlog.processors.JSONRenderer(ensure_ascii=False),
    ]


def _own_processors(shared: list[Processor], log_format: LogFormat) -> list[Processor]:
    return [_below_threshold, *shared, *_renderer(log_format)]


def configure_logging(level: str = "INFO", log_format: LogFormat = "auto") -> None:
    """auditq's own events and the libraries' logs on stdout, rendered as `log_format` says."""
    _Configured.level = _LEVELS[level.upper()]
    _Configured.stream = sys.stdout
    _never_fail_on_encoding(sys.stdout)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    # The same list object, refilled: loggers cached by an earlier configuration hold it.
    processors: list[Processor] = structlog.get_config()["processors"]
    processors[:] = _own_processors(shared, log_format)
    structlog.configure(
        processors=processors,
        logger_factory=_StdoutLogger,
        wrapper_class=structlog.make_filtering_bound_logger(logging.NOTSET),
        cache_logger_on_first_use=True,
    )
    _route_library_logs(shared, level, log_format)


def _never_fail_on_encoding(stream: TextIO) -> None:
    """On a stdout that is not UTF-8 (a bare C locale), escape what it cannot hold."""
    encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
    if encoding != "utf8" and isinstance(stream, io.TextIOWrapper):
        stream.reconfigure(errors="backslashreplace")


def _route_library_logs(shared: list[Processor], level: str, log_format: LogFormat) -> None:
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *_renderer(log_format),
        ],
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Their own handlers would print their own lines beside ours.
    for name in ("arq", "uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers.clear()
        logging.getLogger(name).propagate = True
    # One line per HTTP call to the model repeats the job's own events.
    for name in ("httpx", "httpx2", "openai"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # uvicorn's access log would repeat the API's own `request` event.
    logging.getLogger("uvicorn.access").disabled = True
