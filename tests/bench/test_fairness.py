from pathlib import Path

import pytest

from tests.bench.quick import run_quick

pytestmark = pytest.mark.bench


def test_fairness_quick_compares_with_the_fifo_revision(tmp_path: Path) -> None:
    rows = run_quick("fairness", tmp_path / "RESULTS.md")

    assert [r["figure"] for r in rows] == [
        "11 interactive submit → succeeded p99",
        "11 b's share while both wait",
        "11 throughput against FIFO",
    ]
    text = (tmp_path / "RESULTS.md").read_text()
    assert "| fair (this revision) |" in text
    assert "| FIFO |" in text
