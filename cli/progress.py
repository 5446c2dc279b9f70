"""Waiting for audits and batches to end, and downloading results, with progress on stderr."""

import functools
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, BinaryIO, TypeVar

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.text import Text

from cli import output
from cli.api_client import ApiClient, ApiProblem, ApiUnreachable
from shared.audits.status import TERMINAL

T = TypeVar("T")


# How long a wait rides out an API that restarts or whose database blinks.
PATIENCE_S = 60.0
EXIT_INTERRUPTED = 130


class Patience:
    """Polls that survive a restarting API (connection refused, 429, 5xx) for a while."""

    def __init__(self, seconds: float = PATIENCE_S) -> None:
        self.seconds = seconds
        self._failing_since: float | None = None

    def poll(self, fetch: Callable[[], T]) -> T | None:
        """`fetch()`, or None after a transient failure; the failure itself once patience ends."""
        try:
            value = fetch()
        except (ApiUnreachable, ApiProblem) as exc:
            if isinstance(exc, ApiProblem) and not exc.transient:
                raise
            now = time.monotonic()
            if self._failing_since is None:
                self._failing_since = now
                output.say(f"{exc.message} (retrying for {self.seconds:.0f}s)", "yellow")
            if now - self._failing_since > self.seconds:
                raise
            return None
        self._failing_since = None
        return value


# How long `batch results` waits its turn while the API serves MAX_RESULT_STREAMS streams.
STREAM_TURN_S = 300.0
TOO_MANY_STREAMS = "too_many_streams"


def stream_in_turn(api: ApiClient, path: str, **params: Any) -> Generator[bytes, None, None]:
    """The body of a GET of `path`, as it arrives. While the API answers 429
    `too_many_streams` (it serves as many result streams as it will), ask again after its
    Retry-After, for up to STREAM_TURN_S: a scheduler's download waits rather than fails."""
    gives_up_at = time.monotonic() + STREAM_TURN_S
    refused = False
    while True:
        try:
            with api.stream(path, **params) as chunks:
                yield from chunks
                return
        except ApiProblem as exc:
            if exc.code != TOO_MANY_STREAMS or time.monotonic() > gives_up_at:
                raise
            if not refused:
                output.say(
                    f"{exc.message} (waiting for a turn, up to {STREAM_TURN_S:.0f}s)", "yellow"
                )
                refused = True
            time.sleep(exc.retry_after_s or 1.0)


@contextmanager
def _interruptible(follow_with: str) -> Iterator[None]:
    """Ctrl-C stops the waiting, not the audits: say how to follow them, exit 130."""
    try:
        yield
    except KeyboardInterrupt:
        output.say(f"stopped waiting; the audits carry on: `{follow_with}`", "yellow")
        raise typer.Exit(EXIT_INTERRUPTED) from None


def wait_for_audit(api: ApiClient, audit_id: str, *, interval: float) -> dict[str, Any]:
    """Poll the audit until it ends, with a spinner; return it as it ended."""
    patience = Patience()
    fetch = functools.partial(api.get, f"/audits/{audit_id}")
    with _interruptible(f"auditq audit get {audit_id}"), output.stderr.status("queued") as spinner:
        while True:
            audit = patience.poll(fetch)
            if audit is not None:
                if audit["status"] in TERMINAL:
                    return audit
                spinner.update(f"{audit['status']} (attempts {audit['attempts']})")
            time.sleep(interval)


class Throughput:
    """Audits finished per second since the wait began, and how long the rest will take.

    Computed from the completions the polls see: rich's own estimate samples the bar's
    advances over a short window, and polls that advance it in jumps leave it empty.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._start: tuple[float, int] | None = None

    def observe(self, *, done: int, total: int) -> tuple[float | None, float | None]:
        """(audits per second, seconds left), or None for what cannot be told yet."""
        now = self._clock()
        if self._start is None:
            self._start = (now, done)
        started_at, done_at_start = self._start
        elapsed, finished = now - started_at, done - done_at_start
        if elapsed <= 0 or finished <= 0:
            return None, None
        rate = finished / elapsed
        return rate, (total - done) / rate


class RateColumn(ProgressColumn):
    """Audits finished per second (the task's `rate` field)."""

    def render(self, task: Task) -> Text:
        rate = task.fields.get("rate")
        return Text("-/s" if rate is None else f"{rate:.1f}/s", style="progress.data.speed")


class EtaColumn(ProgressColumn):
    """Time left at the current rate (the task's `eta` field, in seconds)."""

    def render(self, task: Task) -> Text:
        done = task.total is not None and task.completed >= task.total
        eta = 0.0 if done else task.fields.get("eta")
        text = "-:--:--" if eta is None else _clock_text(eta)
        return Text(f"eta {text}", style="progress.remaining")


def _clock_text(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _batch_progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        EtaColumn(),
        console=output.stderr,
    )


def wait_for_batches(
    api: ApiClient, batch_ids: list[str], *, interval: float
) -> list[dict[str, Any]]:
    """Poll the batches until none is running, with one progress bar over all their audits."""
    latest: dict[str, dict[str, Any]] = {}
    patience = Patience()
    follow_with = "auditq batch status " + " ".join(batch_ids)
    throughput = Throughput()
    with _interruptible(follow_with), _batch_progress() as progress:
        task = progress.add_task("waiting", total=None, rate=None, eta=None)
        while True:
            for batch_id in batch_ids:
                if latest.get(batch_id, {}).get("status", "running") == "running":
                    batch = patience.poll(functools.partial(api.get, f"/batches/{batch_id}"))
                    latest[batch_id] = batch or latest.get(batch_id, {})
            batches = [latest[batch_id] for batch_id in batch_ids]
            if all(batches):
                _show(progress, task, output.total_counts(batches), throughput)
                if all(batch["status"] != "running" for batch in batches):
                    return batches
            time.sleep(interval)


def _show(
    progress: Progress, task: TaskID, totals: Mapping[str, int], throughput: Throughput
) -> None:
    done = totals["succeeded"] + totals["failed"] + totals["cancelled"]
    rate, eta = throughput.observe(done=done, total=totals["total"])
    description = _describe(totals)
    progress.update(
        task, total=totals["total"], completed=done, description=description, rate=rate, eta=eta
    )


def _describe(totals: Mapping[str, int]) -> str:
    parts = [
        f"[{output.STATUS_STYLES[status]}]{totals[status]} {status}[/]"
        for status in output.COUNTED
        if totals[status] or status in ("succeeded", "failed")
    ]
    return " · ".join(parts)


def copy_lines(
    chunks: Iterator[bytes], sink: BinaryIO, *, total: int | None, show_progress: bool = True
) -> int:
    """Write the NDJSON `chunks` as they come; return the number of lines written."""
    lines = 0
    with Progress(
        SpinnerColumn(),
        TextColumn("results"),
        BarColumn(),
        MofNCompleteColumn(),
        console=output.stderr,
        transient=True,
        disable=not show_progress,
    ) as progress:
        task = progress.add_task("results", total=total)
        for chunk in chunks:
            sink.write(chunk)
            count = chunk.count(b"\n")
            lines += count
            progress.advance(task, count)
    sink.flush()
    return lines
