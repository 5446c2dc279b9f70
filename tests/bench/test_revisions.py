from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_revisions_quick_compares_this_tree_with_another(tmp_path: Path) -> None:
    rows = run_quick("revisions", tmp_path / "RESULTS.md", "--against", "HEAD")

    assert [r["figure"] for r in rows] == [
        "10 submit req/s, this tree vs HEAD",
        "10 GET by id req/s, this tree vs HEAD",
    ]
    for row in rows:
        assert numbers(row["measured"])[0] > 0
