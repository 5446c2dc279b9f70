"""`auditq batch submit|status|results`: many audits at once, for people and schedulers."""

import json
import os
import sys
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, BinaryIO
from uuid import UUID

import typer

from cli import output
from cli.batch_file import Chunk, read_lines, split
from cli.commands.options import (
    DEFAULT_API_URL,
    DEFAULT_POLL_INTERVAL,
    ApiUrl,
    JsonOutput,
    PollInterval,
    Wait,
)
from cli.errors import EXIT_OK, CliError, exit_code, reports_errors
from shared.audits.status import RETRYABLE

if TYPE_CHECKING:
    from cli.api_client import ApiClient, Reply

app = typer.Typer(
    help="Submit batches of audits and collect their results.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

UNSUCCESSFUL = sorted(RETRYABLE)  # what did not succeed is what can be retried
FAILURES_SHOWN = 10

BatchId = Annotated[UUID, typer.Argument(help="The batch's id.")]
AuditsFile = Annotated[
    Path,
    typer.Argument(
        exists=True,
        dir_okay=False,
        help="JSON lines, each a POST /audits body; blank lines are skipped.",
    ),
]
Rubric = Annotated[
    str | None,
    typer.Option(help="The rubric of the lines that give neither `criteria` nor `rubric`."),
]
Name = Annotated[
    str | None,
    typer.Option(help="The batches' name; a new name also submits the same file again."),
]
OutputFile = Annotated[
    Path | None,
    typer.Option("--output", "-o", dir_okay=False, help="Write to this file, not stdout."),
]


@app.command("submit")
@reports_errors
def submit(
    file: AuditsFile,
    rubric: Rubric = None,
    name: Name = None,
    wait: Wait = False,
    poll_interval: PollInterval = DEFAULT_POLL_INTERVAL,
    api_url: ApiUrl = DEFAULT_API_URL,
    json_output: JsonOutput = False,
) -> None:
    """Submit one audit per line of FILE, in batches of up to 1,000.

    Every line is checked first: a malformed one submits nothing. Running the
    command again on the same file submits nothing twice.
    """
    from cli.api_client import ApiClient
    from cli.progress import wait_for_batches

    chunks = split(read_lines(file, rubric=rubric), name=name)
    with ApiClient(api_url) as api:
        batches = _submit_chunks(api, chunks)
        if wait:
            batches = wait_for_batches(
                api, [batch["id"] for batch in batches], interval=poll_interval
            )
        _print_batches(
            api, batches, json_output=json_output, title="Finished" if wait else "Submitted"
        )
    if not wait:
        ids = " ".join(batch["id"] for batch in batches)
        output.say(f"follow them with: auditq batch status {ids}", "dim")
    raise typer.Exit(_exit_code(batches) if wait else EXIT_OK)


def _submit_chunks(api: "ApiClient", chunks: list[Chunk]) -> list[dict[str, Any]]:
    accepted: list[dict[str, Any]] = []
    for chunk in chunks:
        where = chunk.label(count=len(chunks))
        try:
            reply = api.post("/batches", chunk.body(), idempotency_key=chunk.idempotency_key())
        except CliError as error:
            raise _not_submitted(error, where=where, chunk=chunk, accepted=accepted) from None
        output.say(f"{where}: {len(chunk.lines)} audits {_outcome(reply)}")
        accepted.append(reply.body)
    return accepted


def _outcome(reply: "Reply") -> str:
    if reply.replayed:
        return f"already submitted as {reply.body['id']} (nothing new sent)"
    return f"accepted as {reply.body['id']}"


def _not_submitted(
    error: CliError, *, where: str, chunk: Chunk, accepted: list[dict[str, Any]]
) -> CliError:
    """The error, naming the file's lines and what the batches before it already sent."""
    from cli.api_client import ApiProblem

    details = chunk.issues_in_file(error) if isinstance(error, ApiProblem) else error.details
    if accepted:
        ids = ", ".join(batch["id"] for batch in accepted)
        details = [
            *details,
            f"the batches before it were accepted ({ids}); "
            "running the command again does not submit them twice",
        ]
    return CliError(f"{where} was not submitted: {error.message}", details=details)


@app.command("status")
@reports_errors
def status(
    batch_id: BatchId, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Show a batch, its audits counted by status; exit 1 if any failed or was cancelled."""
    from cli.api_client import ApiClient

    with ApiClient(api_url) as api:
        batch = api.get(f"/batches/{batch_id}")
        _print_batches(api, [batch], json_output=json_output, title="Batch")
    raise typer.Exit(_exit_code([batch]))


@app.command("results")
@reports_errors
def results(
    batch_id: BatchId,
    out: OutputFile = None,
    api_url: ApiUrl = DEFAULT_API_URL,
) -> None:
    """Stream the batch's results, one JSON object per audit and line (NDJSON)."""
    from cli.api_client import ApiClient
    from cli.progress import copy_lines

    with ApiClient(api_url) as api:
        total = api.get(f"/batches/{batch_id}")["counts"]["total"]
        with _sink(out) as sink:
            # A progress bar would garble NDJSON shown on the same terminal.
            show_progress = out is not None or not sys.stdout.isatty()
            chunks = _result_lines(api, batch_id)
            lines = copy_lines(chunks, sink, total=total, show_progress=show_progress)
    output.say(f"{lines} audit result(s) written to {out or 'stdout'}")


@app.command("cancel")
@reports_errors
def cancel(
    batch_id: BatchId, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Cancel every audit of the batch that is still queued or running."""
    _act(f"/batches/{batch_id}/cancel", title="Cancelled", api_url=api_url, json_output=json_output)


@app.command("retry")
@reports_errors
def retry(
    batch_id: BatchId,
    include_cancelled: Annotated[
        bool, typer.Option("--include-cancelled", help="Queue the cancelled audits again too.")
    ] = False,
    api_url: ApiUrl = DEFAULT_API_URL,
    json_output: JsonOutput = False,
) -> None:
    """Queue the batch's failed audits again, in one call; follow with `auditq batch status`."""
    from cli.api_client import ApiClient

    query = "?include=cancelled" if include_cancelled else ""
    with ApiClient(api_url) as api:
        retried = api.post(f"/batches/{batch_id}/retry{query}", None).body
    if json_output:
        output.print_json(retried)
        return
    requeued = retried["requeued"]
    output.say(f"queued again: {requeued['failed']} failed, {requeued['cancelled']} cancelled")
    output.show(output.batches_table([retried["batch"]], title="Batch"))
    output.say(f"follow it with: auditq batch status {batch_id}", "dim")


@app.command("rerun")
@reports_errors
def rerun(
    batch_id: BatchId, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Run every audit of the batch again as a new batch, with the same inputs and budget."""
    _act(f"/batches/{batch_id}/rerun", title="Rerun", api_url=api_url, json_output=json_output)


def _act(path: str, *, title: str, api_url: str, json_output: bool) -> None:
    """POST to `path`, which answers with a batch, and show that batch."""
    from cli.api_client import ApiClient

    with ApiClient(api_url) as api:
        batch = api.post(path, None).body
        _print_batches(api, [batch], json_output=json_output, title=title)


def _result_lines(api: "ApiClient", batch_id: UUID) -> Iterator[bytes]:
    """The batch's result lines; a stream the API cut short is resumed where it stopped.

    A stream cut short ends with a line without `id`, `{"code": "results_interrupted", …}`,
    naming the audit to resume after; every result line starts with its `id`.
    """
    from cli.progress import stream_in_turn

    after: str | None = None
    while True:
        with closing(stream_in_turn(api, f"/batches/{batch_id}/results", after=after)) as chunks:
            for line in _lines(chunks):
                if not line.startswith(b'{"code":'):
                    yield line
                    continue
                after = json.loads(line).get("after")
                if after is None:
                    raise CliError("the API could not read the results to the end: run it again")
                break
            else:
                return


def _lines(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """Whole lines, each with its newline, whatever the chunks' boundaries."""
    pending = b""
    for chunk in chunks:
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            yield line + b"\n"
    if pending:
        yield pending


@contextmanager
def _sink(path: Path | None) -> Iterator[BinaryIO]:
    """stdout, or `path`, which appears only once complete (a half download is no result)."""
    if path is None:
        with _stdout_sink() as stdout:
            yield stdout
        return
    partial = path.with_name(path.name + ".part")
    try:
        with partial.open("wb") as file:
            yield file
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


@contextmanager
def _stdout_sink() -> Iterator[BinaryIO]:
    try:
        yield sys.stdout.buffer
    except BrokenPipeError:
        # The reader went away (`… | head`): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise typer.Exit(EXIT_OK) from None


def _print_batches(
    api: "ApiClient", batches: list[dict[str, Any]], *, json_output: bool, title: str
) -> None:
    """The batches; for people, also the first audits that did not succeed, and why."""
    if json_output:
        output.print_json({"batches": batches})
        return
    output.show(output.batches_table(batches, title=title))
    failures = _first_failures(api, batches)
    if failures:
        output.show(output.failures_table(failures, total=_unsuccessful(batches)))


def _first_failures(api: "ApiClient", batches: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for batch in batches:
        if len(found) < FAILURES_SHOWN and _unsuccessful([batch]):
            params = {"batch_id": batch["id"], "status": UNSUCCESSFUL, "limit": FAILURES_SHOWN}
            found.extend(api.get("/audits", **params)["items"])
    return found[:FAILURES_SHOWN]


def _unsuccessful(batches: list[dict[str, Any]]) -> int:
    totals = output.total_counts(batches)
    return totals["failed"] + totals["cancelled"]


def _exit_code(batches: list[dict[str, Any]]) -> int:
    return exit_code(unsuccessful=_unsuccessful(batches))
