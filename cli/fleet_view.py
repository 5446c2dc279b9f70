"""How `auditq status` shows the fleet: the figures first, then the queue and failures."""

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from cli.output import STATUS_STYLES

PRIORITIES = ("interactive", "bulk")


def duration(seconds: float) -> str:
    """`42 s`, `3 min 12 s`, `2 h 5 min`."""
    whole = round(seconds)
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60} s"
    return f"{whole // 3600} h {whole % 3600 // 60} min"


def fleet_view(fleet: Mapping[str, Any]) -> RenderableType:
    parts: list[RenderableType] = [_figures(fleet)]
    if fleet["queue"]["by_priority_and_tenant"]:
        parts.append(_queue_table(fleet["queue"]))
    if fleet["failures"]:
        parts.append(_failures_table(fleet["failures"]))
    return Group(*parts)


def _figures(fleet: Mapping[str, Any]) -> Table:
    queue, throughput = fleet["queue"], fleet["throughput"]
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column(justify="right")
    grid.add_column()
    grid.add_row("queued", f"{queue['queued']:,}", _oldest(queue))
    batches = fleet["batches_running"]
    in_batches = f"{batches} batch{'' if batches == 1 else 'es'} in progress"
    grid.add_row("running", f"{fleet['audits_running']:,}", in_batches)
    alive = fleet["workers_alive"]
    grid.add_row(
        "workers alive",
        Text("?" if alive is None else str(alive), style="red" if not alive else ""),
        "Redis did not say" if alive is None else "heartbeat under 30 s",
    )
    recent = throughput["last_5_minutes"]
    grid.add_row("last 5 min", f"{recent['total']:,}", _finished(recent, minutes=5))
    hour = throughput["last_hour"]
    grid.add_row("last hour", f"{hour['total']:,}", _finished(hour, minutes=60))
    return grid


def _oldest(queue: Mapping[str, Any]) -> str:
    if not queue["queued"]:
        return "none waiting"
    ages = queue["oldest_age_seconds"]
    by_priority = ", ".join(f"{p} {duration(ages.get(p, 0))}" for p in PRIORITIES)
    return f"oldest {duration(max(ages.values()))} ({by_priority})"


def _finished(counts: Mapping[str, int], *, minutes: int) -> Text:
    text = Text(f"finished, {counts['total'] / minutes:.1f}/min")
    for status in ("succeeded", "failed", "cancelled"):
        text.append(" · ")
        text.append(f"{counts[status]} {status}", style=STATUS_STYLES[status])
    return text


def _queue_table(queue: Mapping[str, Any]) -> Table:
    by_tenant: dict[str, dict[str, int]] = {}
    for entry in queue["by_priority_and_tenant"]:
        by_tenant.setdefault(entry["tenant"], {})[entry["priority"]] = entry["queued"]
    table = Table(title="Queued by tenant", title_justify="left")
    table.add_column("tenant")
    for name in (*PRIORITIES, "total"):
        table.add_column(name, justify="right")
    for tenant, counts in sorted(by_tenant.items()):
        row = [counts.get(priority, 0) for priority in PRIORITIES]
        table.add_row(tenant, *(f"{n:,}" for n in row), f"{sum(row):,}")
    return table


def _failures_table(failures: list[Mapping[str, Any]]) -> Table:
    # Whole codes and ids, on an 80-column terminal too: short headings.
    table = Table(title="Failed audits by error code", title_justify="left")
    table.add_column("code", style="red", no_wrap=True)
    table.add_column("1 h", justify="right", no_wrap=True)
    table.add_column("5 min", justify="right", no_wrap=True)
    table.add_column("latest", no_wrap=True, min_width=36)
    for failure in failures:
        latest = failure["latest"][0]["id"] if failure["latest"] else ""
        table.add_row(
            failure["code"], f"{failure['last_hour']:,}", f"{failure['last_5_minutes']:,}", latest
        )
    return table
