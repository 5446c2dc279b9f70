from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_capacity_quick_counts_what_an_audit_costs(tmp_path: Path) -> None:
    rows = run_quick("capacity", tmp_path / "RESULTS.md")

    figures = {r["figure"]: r["measured"] for r in rows}
    xacts, written, wal = numbers(
        figures["13 per audit: PostgreSQL transactions / rows written / WAL"]
    )
    # An audit is one INSERT (submit), then the claim's and the finish's UPDATE: what the
    # servers' counters show once every phase's statistics have been flushed.
    assert written == pytest.approx(3.0, abs=0.05)
    assert xacts >= 3.0
    assert wal > 1  # KiB
    commands, memory = numbers(
        figures["13 per audit: Redis commands (less idle polling) / memory per queued job"]
    )
    assert commands > 5
    assert memory > 50
    assert all(
        ms >= 0 for ms in numbers(figures["13 per audit: CPU ms API / worker / PostgreSQL / Redis"])
    )
    rates = numbers(figures["13 audits/s at 1, 2 workers"])
    assert rates[0] > 0  # 1 worker
    assert rates[2] > 0  # 2 workers
    text = (tmp_path / "RESULTS.md").read_text()
    assert "WAL per audit by resource manager" in text
    assert "| `evalsha` |" in text
    assert "`pk_audit`" in text
