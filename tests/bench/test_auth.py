from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_auth_quick_compares_keys_with_none(tmp_path: Path) -> None:
    rows = run_quick("auth", tmp_path / "RESULTS.md")

    assert [r["figure"] for r in rows] == [
        "9 submit req/s, AUTH=keys vs none",
        "9 GET by id req/s, AUTH=keys vs none",
    ]
    for row in rows:
        assert numbers(row["measured"])[0] > 0
