from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_submit_quick_measures_both_apps(tmp_path: Path) -> None:
    rows = run_quick("submit", tmp_path / "RESULTS.md")

    ratio = next(r for r in rows if r["figure"].startswith("1 submit req/s"))
    auditq_rps, baseline_rps = numbers(ratio["measured"])[1:3]
    assert auditq_rps > 0
    assert baseline_rps > 0
    assert isinstance(ratio["met"], bool)
    text = (tmp_path / "RESULTS.md").read_text()
    assert "## 0. The load generator's ceiling" in text
    assert "## 1. Submit" in text
