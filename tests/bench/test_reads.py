from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_reads_quick_compares_by_id_and_deep_pages(tmp_path: Path) -> None:
    rows = run_quick("reads", tmp_path / "RESULTS.md")

    assert numbers(rows[0]["measured"])[0] > 0
    deep = [r for r in rows if "depth" in r["figure"]]
    assert len(deep) == 2  # without and with a status filter
    text = (tmp_path / "RESULTS.md").read_text()
    assert "Index Scan" in text  # the plans are there, and use an index
