"""`auditq submit FILE` and `auditq audit get ID`: one audit at a time."""

from pathlib import Path
from typing import Annotated, Any
from uuid import UUID

import typer

from cli import output
from cli.commands.options import (
    DEFAULT_API_URL,
    DEFAULT_POLL_INTERVAL,
    ApiUrl,
    JsonOutput,
    PollInterval,
    Wait,
)
from cli.errors import EXIT_OK, EXIT_VERDICT_FAIL, exit_code, reports_errors
from cli.input_files import read_criteria, read_text
from shared.audits.priority import Priority
from shared.audits.status import RETRYABLE

app = typer.Typer(
    help="Read, list, cancel and retry audits.", no_args_is_help=True, rich_markup_mode=None
)

UNSUCCESSFUL = RETRYABLE  # what did not succeed is what can be retried

ContentFile = Annotated[
    Path, typer.Argument(exists=True, dir_okay=False, help="The content to audit (UTF-8 text).")
]
CriteriaFile = Annotated[
    Path | None,
    typer.Option(
        "--criteria", exists=True, dir_okay=False, help="A JSON list of {id, description, weight?}."
    ),
]
RubricName = Annotated[str | None, typer.Option("--rubric", help="A published rubric's name.")]
RubricVersion = Annotated[
    int | None, typer.Option("--rubric-version", min=1, help="Default: the rubric's latest.")
]
Subject = Annotated[str | None, typer.Option(help="What the content is; default: FILE's name.")]
Model = Annotated[str | None, typer.Option(help="A model of the API's ALLOWED_MODELS.")]
PriorityOption = Annotated[
    Priority | None,
    typer.Option(
        "--priority", help="interactive (the API's default for one audit) runs before bulk."
    ),
]
Samples = Annotated[
    int | None,
    typer.Option(
        "--samples",
        min=1,
        help="Model calls to judge with, at once, keeping each finding's majority verdict "
        "(default 1; at most the API's MAX_SAMPLES).",
    ),
]
AuditId = Annotated[UUID, typer.Argument(help="The audit's id.")]
Statuses = Annotated[
    list[str] | None,
    typer.Option("--status", help="Only audits in this status; repeat for several."),
]
FailOnVerdict = Annotated[
    bool,
    typer.Option(
        "--fail-on-verdict",
        help="With --wait: exit 3 when the audit succeeded with the verdict `fail` (a CI gate).",
    ),
]


@reports_errors
def submit(
    file: ContentFile,
    criteria: CriteriaFile = None,
    rubric: RubricName = None,
    rubric_version: RubricVersion = None,
    subject: Subject = None,
    model: Model = None,
    priority: PriorityOption = None,
    samples: Samples = None,
    wait: Wait = False,
    fail_on_verdict: FailOnVerdict = False,
    poll_interval: PollInterval = DEFAULT_POLL_INTERVAL,
    api_url: ApiUrl = DEFAULT_API_URL,
    json_output: JsonOutput = False,
) -> None:
    """Audit the text of FILE against --criteria or a published --rubric.

    Exit codes with --wait: 0 succeeded, 1 failed or cancelled, 3 succeeded with the
    verdict `fail` under --fail-on-verdict; 2 is a usage error or a problem from the API.
    """
    _check_criteria_options(criteria, rubric, rubric_version)
    if fail_on_verdict and not wait:
        raise typer.BadParameter("needs --wait", param_hint="'--fail-on-verdict'")
    _submit(
        _request(
            file,
            criteria,
            rubric,
            rubric_version,
            subject=subject,
            model=model,
            priority=priority,
            samples=samples,
        ),
        wait=wait,
        fail_on_verdict=fail_on_verdict,
        poll_interval=poll_interval,
        api_url=api_url,
        json_output=json_output,
    )


def _check_criteria_options(
    criteria: Path | None, rubric: str | None, rubric_version: int | None
) -> None:
    if (criteria is None) == (rubric is None):
        raise typer.BadParameter(
            "give exactly one of --criteria FILE or --rubric NAME",
            param_hint="'--criteria' / '--rubric'",
        )
    if rubric_version is not None and rubric is None:
        raise typer.BadParameter("needs --rubric", param_hint="'--rubric-version'")


def _request(
    file: Path,
    criteria: Path | None,
    rubric: str | None,
    rubric_version: int | None,
    *,
    subject: str | None,
    model: str | None,
    priority: Priority | None,
    samples: int | None,
) -> dict[str, Any]:
    """The POST /audits body; `None` options are left to the API's defaults."""
    body: dict[str, Any] = {
        "subject": subject or file.name,
        "content": read_text(file),
        "criteria": read_criteria(criteria) if criteria else None,
        "rubric": rubric,
        "rubric_version": rubric_version,
        "model": model,
        "priority": priority,
        "samples": samples,
    }
    return {key: value for key, value in body.items() if value is not None}


def _submit(
    body: dict[str, Any],
    *,
    wait: bool,
    fail_on_verdict: bool,
    poll_interval: float,
    api_url: str,
    json_output: bool,
) -> None:
    from cli.api_client import ApiClient
    from cli.progress import wait_for_audit

    with ApiClient(api_url) as api:
        audit = api.post("/audits", body).body
        output.say(f"audit {audit['id']} {audit['status']}")
        if wait:
            audit = wait_for_audit(api, audit["id"], interval=poll_interval)
        else:
            output.say(f"follow it with: auditq audit get {audit['id']}", "dim")
    _print(audit, json_output=json_output)
    raise typer.Exit(_exit_code(audit, fail_on_verdict=fail_on_verdict) if wait else EXIT_OK)


@app.command("get")
@reports_errors
def get(
    audit_id: AuditId,
    api_url: ApiUrl = DEFAULT_API_URL,
    json_output: JsonOutput = False,
) -> None:
    """Show one audit, with its result or error; exit 1 if it failed or was cancelled."""
    from cli.api_client import ApiClient

    with ApiClient(api_url) as api:
        audit = api.get(f"/audits/{audit_id}")
    _print(audit, json_output=json_output)
    raise typer.Exit(_exit_code(audit))


@app.command("list")
@reports_errors
def list_audits(
    status: Statuses = None,
    batch_id: Annotated[UUID | None, typer.Option(help="Only the audits of this batch.")] = None,
    rubric: Annotated[str | None, typer.Option(help="Only audits run with this rubric.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=50, help="Audits per page.")] = 20,
    cursor: Annotated[str | None, typer.Option(help="The page after a previous one.")] = None,
    api_url: ApiUrl = DEFAULT_API_URL,
    json_output: JsonOutput = False,
) -> None:
    """List audits, newest first (one page; the next is named at the end)."""
    from cli.api_client import ApiClient

    batch = str(batch_id) if batch_id else None
    filters = {"status": status, "batch_id": batch, "rubric": rubric, "cursor": cursor}
    params = {name: value for name, value in filters.items() if value}
    with ApiClient(api_url) as api:
        page = api.get("/audits", limit=limit, **params)
    if json_output:
        output.print_json(page)
        return
    output.show(output.audits_table(page["items"]))
    if page["next_cursor"]:
        output.say(f"more with: --cursor {page['next_cursor']}", "dim")


@app.command("cancel")
@reports_errors
def cancel(
    audit_id: AuditId, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Cancel a queued or running audit."""
    _act(f"/audits/{audit_id}/cancel", api_url=api_url, json_output=json_output)


@app.command("retry")
@reports_errors
def retry(
    audit_id: AuditId, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Queue a failed or cancelled audit again."""
    _act(f"/audits/{audit_id}/retry", api_url=api_url, json_output=json_output)


@app.command("rerun")
@reports_errors
def rerun(
    audit_id: AuditId, api_url: ApiUrl = DEFAULT_API_URL, json_output: JsonOutput = False
) -> None:
    """Queue a new audit with the same inputs (content, criteria, model, samples)."""
    _act(f"/audits/{audit_id}/rerun", api_url=api_url, json_output=json_output)


def _act(path: str, *, api_url: str, json_output: bool) -> None:
    from cli.api_client import ApiClient

    with ApiClient(api_url) as api:
        audit = api.post(path, None).body
    _print(audit, json_output=json_output)


def _print(audit: dict[str, Any], *, json_output: bool) -> None:
    if json_output:
        output.print_json(audit)
    else:
        output.show(output.audit_view(audit))


def _exit_code(audit: dict[str, Any], *, fail_on_verdict: bool = False) -> int:
    code = exit_code(unsuccessful=int(audit["status"] in UNSUCCESSFUL))
    if code == EXIT_OK and fail_on_verdict and (audit.get("result") or {}).get("verdict") == "fail":
        return EXIT_VERDICT_FAIL
    return code
