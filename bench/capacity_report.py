"""The capacity benchmark's section of bench/RESULTS.md (`bench/capacity.py` measures)."""

from typing import TYPE_CHECKING

from bench.results import Section

if TYPE_CHECKING:
    from bench.capacity import Measured, Phase, Point, Sizes

CPU_PARTS = ("api", "workers", "postgres", "redis", "simulator")
CPU_NAMES = {
    "api": "API",
    "workers": "worker",
    "postgres": "PostgreSQL",
    "redis": "Redis",
    "simulator": "simulator (the model)",
}


def _per(value: float, count: int, digits: int = 2) -> str:
    return f"{value / max(1, count):,.{digits}f}"


def _kb(value: float) -> str:
    return f"{value / 1024:,.2f} KiB"


def section(m: "Measured", s: "Sizes") -> Section:
    out = Section("capacity", "13. Capacity: what one audit costs, and how workers scale")
    out.add(
        f"Servers of the benchmark's own, started fresh for the run, on unix sockets: "
        f"{m.versions}. The API (uvicorn, one process), workers (`python -m worker`) and "
        "the simulator are real processes on the same machine. An audit is 1 KB of JSON "
        "(3 criteria); `docs/CAPACITY.md` turns these figures into a model.",
        "",
    )
    _per_audit(out, m, s)
    _wal(out, m)
    _redis(out, m)
    _rows(out, m)
    _idle(out, m, s)
    _scaling(out, m, s)
    return out


def idle_calls(m: "Measured") -> dict[str, float]:
    """Redis commands a second of one idle worker (its polls, beats, reconciler), by command."""
    seconds = m.idle.cpu.elapsed_s
    return {name: n / seconds for name, n in m.idle.delta.redis_calls.items()}


def marginal_calls(m: "Measured") -> dict[str, float]:
    """The run's Redis commands less what its one worker would have sent idle meanwhile."""
    idle, seconds = idle_calls(m), m.run.cpu.elapsed_s
    return {
        name: max(0.0, n - idle.get(name, 0.0) * seconds)
        for name, n in m.run.delta.redis_calls.items()
    }


def _phase_cells(phase: "Phase", key: str) -> str:
    d, n = phase.delta, phase.count
    audit = d.tables.get("audit")
    values: dict[str, str] = {
        "xacts": _per(d.xacts, n),
        "rows": _per(d.rows, n),
        "audit": (
            f"{_per(audit.inserted, n)} / {_per(audit.updated, n)} ({_per(audit.hot_updated, n)}) "
            f"/ {_per(audit.deleted, n)}"
            if audit
            else "—"
        ),
        "wal": f"{_per(d.wal_bytes, n, 0)} B",
        "wal_records": f"{_per(d.wal_records, n)} ({_per(d.wal_fpi, n)} FPI)",
        "redis": _per(d.redis_commands, n),
    }
    return values[key]


def _per_audit(out: Section, m: "Measured", s: "Sizes") -> None:
    submit, ran = m.submit, m.run
    ok = ran.statuses.get("succeeded", 0)
    out.add(
        f"**Per audit.** {s.singles:,} audits, one `POST /api/v1/audits` each (8 clients), "
        "with no worker running; the API stopped, then one worker "
        f"(WORKER_CONCURRENCY={s.run_concurrency}, simulator {s.run_latency_ms} ms) ran them "
        f"all ({ok:,} succeeded). Counters are the servers' own (pg_stat_database, "
        "pg_stat_user_tables, the WAL position and pg_stat_wal, INFO commandstats), each "
        "phase's processes stopped before its closing reading; CPU from /proc (PostgreSQL: "
        "the postmaster and every backend, live or exited). One CHECKPOINT was forced "
        "before submitting: FPI counts the pages first written since.",
        "",
    )
    rows = [
        ("PostgreSQL transactions", "xacts"),
        ("rows written (all tables)", "rows"),
        ("`audit` rows: inserted / updated (HOT) / deleted", "audit"),
        ("WAL bytes", "wal"),
        ("WAL records (full-page images)", "wal_records"),
        ("Redis commands", "redis"),
    ]
    table = [[name, _phase_cells(submit, key), _phase_cells(ran, key)] for name, key in rows]
    marginal = sum(marginal_calls(m).values())
    table.append(["Redis commands, less an idle worker's", "", _per(marginal, ran.count)])
    for part in CPU_PARTS:
        table.append(
            [
                f"CPU ms: {CPU_NAMES[part]}",
                f"{submit.cpu.ms_per(part, submit.count):.2f}",
                f"{ran.cpu.ms_per(part, ran.count):.2f}",
            ]
        )
    out.table(["per audit", "submit (API)", "run (worker)"], table)
    total_wal = submit.delta.wal_bytes + ran.delta.wal_bytes
    out.target(
        "13 per audit: PostgreSQL transactions / rows written / WAL",
        "—",
        f"{_per(submit.delta.xacts + ran.delta.xacts, s.singles, 1)} / "
        f"{_per(submit.delta.rows + ran.delta.rows, s.singles, 1)} / "
        f"{_kb(total_wal / s.singles)}",
        None,
    )
    out.target(
        "13 per audit: Redis commands (less idle polling) / memory per queued job",
        "—",
        f"{_per(submit.delta.redis_commands + marginal, s.singles, 1)} / "
        f"{_per(submit.delta.redis_memory, s.singles, 0)} B",
        None,
    )
    cpu = {
        part: submit.cpu.ms_per(part, s.singles) + ran.cpu.ms_per(part, s.singles)
        for part in ("api", "workers", "postgres", "redis")
    }
    out.target(
        "13 per audit: CPU ms API / worker / PostgreSQL / Redis",
        "—",
        " / ".join(f"{v:.2f}" for v in cpu.values()),
        None,
    )


def _wal(out: Section, m: "Measured") -> None:
    kinds: dict[str, list[str]] = {}
    phases = (m.submit, m.run)
    if any(p.delta.wal_by_kind is None for p in phases):
        out.add("_pg_waldump could not read the WAL of a phase: no breakdown by kind._", "")
        return
    for column, phase in enumerate(phases):
        for kind, k in (phase.delta.wal_by_kind or {}).items():
            cells = kinds.setdefault(kind, ["—", "—"])
            cells[column] = (
                f"{_per(k.records, phase.count)} rec, {_per(k.record_bytes, phase.count, 0)} B"
                + (f" + {_per(k.fpi_bytes, phase.count, 0)} B FPI" if k.fpi_bytes else "")
            )
    out.add("**WAL per audit by resource manager** (`pg_waldump --stats` over each phase):", "")
    out.table(["kind", "submit", "run"], [[kind, *cells] for kind, cells in sorted(kinds.items())])


def _redis(out: Section, m: "Measured") -> None:
    submit, run, marginal = m.submit.delta.redis_calls, m.run.delta.redis_calls, marginal_calls(m)
    names = sorted(set(submit) | set(run), key=lambda c: -(submit.get(c, 0) + run.get(c, 0)))
    rows = [
        [
            f"`{name}`",
            _per(submit.get(name, 0), m.submit.count),
            _per(run.get(name, 0), m.run.count),
            _per(marginal.get(name, 0), m.run.count),
        ]
        for name in names
        # what rounds to nothing per audit (connections, start-up): in the idle figures
        if max(submit.get(name, 0) / m.submit.count, run.get(name, 0) / m.run.count) >= 0.005
    ]
    out.add(
        "**Redis commands per audit, by command** (INFO commandstats counts the commands a "
        "script runs as well as the EVALSHA). *Less idle*: the run's, less what its worker "
        "sends idle (below) over as long:",
        "",
    )
    out.table(["command", "submit", "run", "run, less idle"], rows)
    out.add(
        f"**Redis memory per queued job**: used_memory with the {m.submit.count:,} jobs "
        f"queued, against before: **{_per(m.submit.delta.redis_memory, m.submit.count, 0)} "
        "bytes** per job.",
        "",
    )


def _size_row(name: str, key: str, m: "Measured") -> list[str]:
    as_run, compacted = m.rows["as_run"], m.rows["compacted"]
    return [
        name,
        _per(float(as_run[key]), int(as_run["rows"]), 0),
        _per(float(compacted[key]), int(compacted["rows"]), 0),
    ]


def _rows(out: Section, m: "Measured") -> None:
    as_run = m.rows["as_run"]
    rows = [
        _size_row("heap", "heap", m),
        _size_row("TOAST", "toast", m),
        _size_row("indexes (all)", "indexes", m),
        _size_row("**total** (pg_total_relation_size)", "total", m),
    ]
    count = int(as_run["rows"])
    compacted = m.rows["compacted_indexes"]
    for index, size in m.rows["indexes"].items():
        rows.append([f"  `{index}`", _per(size, count, 0), _per(compacted.get(index, 0), count, 0)])
    out.add(
        f"**Bytes of `audit` per row** ({count:,} succeeded audits): as the run left them "
        "(each audit written three times: dead versions not yet vacuumed) and compacted "
        "(VACUUM FULL). A row's own size, `avg(pg_column_size(audit.*))`: "
        f"**{float(as_run['row_bytes']):,.0f} B**, of which content "
        f"{float(as_run['content']):,.0f} B, criteria {float(as_run['criteria']):,.0f} B, "
        f"result {float(as_run['result']):,.0f} B.",
        "",
    )
    out.table(["bytes per audit", "as run", "compacted"], rows)


def _idle(out: Section, m: "Measured", s: "Sizes") -> None:
    idle = m.idle
    seconds = idle.cpu.elapsed_s
    top = sorted(idle_calls(m).items(), key=lambda kv: -kv[1])[:6]
    out.add(
        f"**An idle worker** ({s.idle_s:.0f} s, nothing queued): "
        f"**{idle.delta.redis_commands / seconds:,.1f} Redis commands/s** "
        f"({', '.join(f'`{k}` {v:.1f}' for k, v in top)}), "
        f"{idle.delta.xacts / seconds * 60:,.1f} PostgreSQL transactions a minute, "
        f"{idle.cpu.cores('workers') * 100:.1f}% of a core (Redis "
        f"{idle.cpu.cores('redis') * 100:.1f}%).",
        "",
    )


def _scaling(out: Section, m: "Measured", s: "Sizes") -> None:
    base = m.scaling[0].rate / m.scaling[0].workers
    out.add(
        f"**Scaling.** WORKER_CONCURRENCY={s.concurrency} per worker, the simulator "
        f"answering in {s.latency_ms} ms: ideal = workers x {s.concurrency} / "
        f"{s.latency_ms / 1000:g} s. For each count, {s.backlog_s:.0f} s of ideal work queued "
        "through `POST /api/v1/batches`, then the workers started together; completed = "
        "steady rate. Cores = CPU seconds per second over the drain. *PG active*: "
        "PostgreSQL client backends active, mean of samples twice a second, and what they "
        "waited on most (CPU = not waiting).",
        "",
    )
    table = [_scaling_row(point, base) for point in m.scaling]
    out.table(
        [
            "workers",
            "ideal",
            "completed",
            "vs ideal",
            "per worker vs 1",
            "cores: workers / PG / Redis / API / sim.",
            "machine busy",
            "CPU ms/audit: worker / PG / Redis",
            "PG active (waits)",
        ],
        table,
    )
    out.target(
        "13 audits/s at " + ", ".join(str(p.workers) for p in m.scaling) + " workers",
        "—",
        ", ".join(f"{p.rate:.0f} ({p.rate / p.ideal:.2f}x ideal)" for p in m.scaling),
        None,
    )


def _scaling_row(p: "Point", base: float) -> list[str]:
    cores = " / ".join(
        f"{p.cpu.cores(part):.2f}" for part in ("workers", "postgres", "redis", "api", "simulator")
    )
    per_audit = " / ".join(
        f"{p.cpu.ms_per(part, p.count):.2f}" for part in ("workers", "postgres", "redis")
    )
    total = sum(p.waits.values()) or 1
    waits = ", ".join(f"{w} {n / total:.0%}" for w, n in p.waits.most_common(3))
    return [
        str(p.workers),
        f"{p.ideal:.0f}/s",
        f"{p.rate:.1f}/s",
        f"{p.rate / p.ideal:.2f}x",
        f"{p.rate / p.workers / base:.2f}x",
        cores,
        f"{p.cpu.machine_busy:.0%}",
        per_audit,
        f"{p.active:.1f} ({waits})",
    ]
