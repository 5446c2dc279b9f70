"""How the client commands show things: rich tables for people, JSON for programs.

Data goes to stdout; progress, status and error messages go to stderr, so that
`auditq … --json | jq` and `auditq batch results ID > out.jsonl` stay clean.
"""

import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.table import Table
from rich.text import Text

from shared.audits.status import AuditStatus
from shared.spend.amounts import shown

stdout = Console(highlight=False)
stderr = Console(stderr=True, highlight=False)

STATUS_STYLES: dict[str, str] = {
    AuditStatus.QUEUED: "cyan",
    AuditStatus.RUNNING: "blue",
    AuditStatus.SUCCEEDED: "green",
    AuditStatus.FAILED: "red",
    AuditStatus.CANCELLED: "yellow",
    "completed": "green",  # a batch's
}
VERDICT_STYLES = {"pass": "green", "partial": "yellow", "fail": "red", "not_applicable": "dim"}
COUNTED = tuple(AuditStatus)


def say(message: str, style: str = "") -> None:
    """A status message, on stderr."""
    stderr.print(Text(message, style=style), soft_wrap=True)


def error(message: str, details: Sequence[str] = ()) -> None:
    stderr.print(Text("error: ", style="bold red") + Text(message), soft_wrap=True)
    for detail in details:
        stderr.print(Text(f"  {detail}"), soft_wrap=True)


def print_json(value: Any) -> None:
    """One JSON document on stdout, whatever the terminal."""
    sys.stdout.write(json.dumps(value, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def show(renderable: RenderableType) -> None:
    stdout.print(renderable)


def styled(value: str, styles: Mapping[str, str]) -> Text:
    return Text(value, style=styles.get(value, ""))


def score_text(score: float | None) -> str:
    return "—" if score is None else f"{score:.1f}"


def finding_score_text(finding: Mapping[str, Any]) -> str:
    """A finding that does not apply has no score worth reading (the model sends 0)."""
    return "n/a" if finding["verdict"] == "not_applicable" else score_text(finding["score"])


def audit_view(audit: Mapping[str, Any]) -> RenderableType:
    """An audit: what it judged, its status and, once done, its result or error."""
    facts = Table.grid(padding=(0, 2))
    facts.add_column(style="bold")
    facts.add_column()
    facts.add_row("audit", Text(audit["id"]))
    facts.add_row("status", _status_line(audit))
    facts.add_row("subject", Text(audit["subject"]))
    facts.add_row("criteria", Text(_criteria_source(audit)))
    facts.add_row("model", Text(audit["model"]))
    if audit.get("batch_id"):
        facts.add_row("batch", Text(audit["batch_id"]))
    result, failure = audit.get("result"), audit.get("error")
    if failure:
        facts.add_row("error", Text(f"{failure['code']}: {failure['message']}", style="red"))
    if not result:
        return facts
    facts.add_row("score", _verdict_line(result))
    facts.add_row("summary", Text(result["summary"]))
    if audit.get("usage"):
        facts.add_row("tokens", Text(f"{audit['usage']['total_tokens']:,}"))
    return Group(facts, findings_table(result["findings"]))


def _status_line(audit: Mapping[str, Any]) -> Text:
    line = styled(audit["status"], STATUS_STYLES)
    line.append(f"  (attempts {audit['attempts']})", style="dim")
    return line


def _criteria_source(audit: Mapping[str, Any]) -> str:
    count = len(audit["criteria"])
    if audit.get("rubric"):
        return f"rubric {audit['rubric']} v{audit['rubric_version']} ({count} criteria)"
    return f"{count} inline criteria"


def _verdict_line(result: Mapping[str, Any]) -> Text:
    line = Text(f"{score_text(result['score'])}  ")
    verdict = result["verdict"]
    line.append(verdict.upper(), style=f"bold {VERDICT_STYLES[verdict]}")
    line.append(f"  (pass threshold {result['pass_threshold']:g})", style="dim")
    return line


def findings_table(findings: Iterable[Mapping[str, Any]]) -> Table:
    table = Table(title="Findings", title_justify="left", expand=True)
    table.add_column("criterion", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("rationale and evidence", ratio=1)
    for finding in findings:
        explanation = Text(finding["rationale"])
        for quote in finding["evidence"]:
            explanation.append(f"\n“{quote}”", style="dim italic")
        table.add_row(
            finding["criterion_id"],
            styled(finding["verdict"], VERDICT_STYLES),
            finding_score_text(finding),
            explanation,
        )
    return table


def batches_table(batches: Sequence[Mapping[str, Any]], *, title: str) -> Table:
    """Batches with their audits counted by status, and a total row when there are several."""
    named = any(batch["name"] for batch in batches)
    table = Table(title=title, title_justify="left")
    table.add_column("batch", no_wrap=True, min_width=36)
    if named:
        table.add_column("name")
    table.add_column("status", no_wrap=True)
    table.add_column("audits")
    for batch in batches:
        name = [batch["name"] or ""] if named else []
        state = styled(batch["status"], STATUS_STYLES)
        table.add_row(batch["id"], *name, state, counts_text(batch["counts"]))
    if len(batches) > 1:
        table.add_section()
        table.add_row("all", *([""] if named else []), "", counts_text(total_counts(batches)))
    return table


def failures_table(audits: Sequence[Mapping[str, Any]], *, total: int) -> Table:
    """Audits that failed or were cancelled, with their error."""
    shown = f"the first {len(audits)} of {total}" if total > len(audits) else f"{total}"
    table = Table(title=f"Not succeeded ({shown})", title_justify="left")
    table.add_column("audit", no_wrap=True, min_width=36)
    table.add_column("subject")
    table.add_column("status", no_wrap=True)
    table.add_column("error")
    for audit in audits:
        failure = audit.get("error") or {}
        reason = f"{failure['code']}: {failure['message']}" if failure else ""
        state = styled(audit["status"], STATUS_STYLES)
        table.add_row(audit["id"], Text(audit["subject"]), state, Text(reason))
    return table


def audits_table(audits: Sequence[Mapping[str, Any]]) -> Table:
    """Audits, one a row: status, score and verdict once done, or why not."""
    table = Table(title=f"Audits ({len(audits)})", title_justify="left")
    table.add_column("audit", no_wrap=True, min_width=36)
    table.add_column("subject")
    table.add_column("status", no_wrap=True)
    table.add_column("result")
    for audit in audits:
        table.add_row(
            audit["id"],
            Text(audit["subject"]),
            styled(audit["status"], STATUS_STYLES),
            _outcome_text(audit),
        )
    return table


def _outcome_text(audit: Mapping[str, Any]) -> Text:
    result, failure = audit.get("result"), audit.get("error")
    if result:
        verdict = result["verdict"]
        return Text(f"{score_text(result['score'])} {verdict}", style=VERDICT_STYLES[verdict])
    if failure:
        return Text(f"{failure['code']}: {failure['message']}", style="red")
    return Text("")


def counts_text(counts: Mapping[str, int]) -> Text:
    """`997/1000 done · 995 succeeded · 2 failed`: the statuses that have audits."""
    done = counts["succeeded"] + counts["failed"] + counts["cancelled"]
    text = Text(f"{done}/{counts['total']} done")
    for status in COUNTED:
        if counts[status]:
            text.append(" · ")
            text.append(f"{counts[status]} {status}", style=STATUS_STYLES[status])
    return text


def total_counts(batches: Iterable[Mapping[str, Any]]) -> dict[str, int]:
    totals = dict.fromkeys((*COUNTED, "total"), 0)
    for batch in batches:
        for status in totals:
            totals[status] += batch["counts"][status]
    return totals


def rubric_view(rubric: Mapping[str, Any]) -> RenderableType:
    heading = Text(f"{rubric['name']} version {rubric['version']}", style="bold")
    table = Table(title=rubric["description"] or None, title_justify="left", expand=True)
    table.add_column("criterion", no_wrap=True)
    table.add_column("weight", justify="right", no_wrap=True)
    table.add_column("description", ratio=1)
    for criterion in rubric["criteria"]:
        table.add_row(criterion["id"], f"{criterion['weight']:g}", criterion["description"])
    return Group(heading, table)


def _day(moment: datetime | None) -> str:
    return "" if moment is None else f"{moment:%Y-%m-%d}"


def keys_table(rows: Sequence[Any]) -> Table:
    """Keys by their display prefix (`KeyRow`s): the keys themselves are never kept."""
    # No outer frame: seven columns whole on an 80-column pipe.
    table = Table(title=f"{len(rows)} key(s)", title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("prefix", "tenant", "role", "label", "created", "last used", "revoked"):
        # Everything but the label whole, even on an 80-column pipe.
        table.add_column(column, no_wrap=column != "label", min_width=len(column))
    for key in rows:
        style = "dim" if key.revoked_at else ""
        table.add_row(
            f"{key.prefix}…",
            key.tenant,
            str(key.role),
            key.label or "",
            _day(key.created_at),
            _day(key.last_used_at),
            _day(key.revoked_at),
            style=style,
        )
    return table


def tenants_table(rows: Sequence[Any]) -> Table:
    """Tenants (`TenantRow`s); a quota left to its setting shows as `default`, and so does a
    webhook secret (WEBHOOK_SECRET's), an own secret as `own`: never the secret."""
    table = Table(title=f"{len(rows)} tenant(s)", title_justify="left")
    for column in ("tenant", "max queued", "submit rpm", "weight", "webhook secret", "created"):
        table.add_column(column, no_wrap=True)
    for tenant in rows:
        table.add_row(
            tenant.name,
            _quota(tenant.max_queued),
            _quota(tenant.submit_rpm),
            str(tenant.weight),
            "default" if tenant.webhook_secret is None else "own",
            _day(tenant.created_at),
        )
    return table


def budgets_table(rows: Sequence[Any], spent: Mapping[str, Decimal], *, resets_on: str) -> Table:
    """What tenants (`TenantRow`s) with a monthly budget or a spend spent this month."""
    shown_rows = [t for t in rows if t.monthly_budget_usd is not None or t.name in spent]
    title = f"spend this month (budgets reset on {resets_on}, 00:00 UTC)"
    table = Table(title=title, title_justify="left")
    for column in ("tenant", "monthly budget", "spent", "left"):
        table.add_column(column, no_wrap=True)
    for tenant in shown_rows:
        budget, used = tenant.monthly_budget_usd, spent.get(tenant.name, Decimal(0))
        left = "-" if budget is None else shown(max(budget - used, Decimal(0)))
        table.add_row(tenant.name, "none" if budget is None else shown(budget), shown(used), left)
    return table


def _quota(value: int | None) -> str:
    return "default" if value is None else str(value)
