from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_batch_quick_times_a_batch(tmp_path: Path) -> None:
    (row,) = run_quick("batch", tmp_path / "RESULTS.md")

    seconds, audits_per_s = numbers(row["measured"])[-2:]
    assert 0 < seconds < 30
    assert audits_per_s > 0
