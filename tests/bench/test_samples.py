from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_samples_quick_compares_three_samples_with_one(tmp_path: Path) -> None:
    [row] = run_quick("samples", tmp_path / "RESULTS.md")

    ratio, three, one = numbers(row["measured"])
    assert ratio > 0
    assert three > 0
    assert one > 0
    text = (tmp_path / "RESULTS.md").read_text()
    assert "model calls" in text
    assert "CPU ms per call" in text
