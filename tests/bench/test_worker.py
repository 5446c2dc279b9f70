from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_worker_quick_compares_with_ideal_and_bare_arq(tmp_path: Path) -> None:
    rows = run_quick("worker", tmp_path / "RESULTS.md")

    figures = {r["figure"]: r for r in rows}
    ideal = next(r for f, r in figures.items() if "vs ideal" in f)
    bare = next(r for f, r in figures.items() if "vs bare arq" in f)
    assert numbers(ideal["measured"])[0] > 0
    assert numbers(bare["measured"])[0] > 0
    delay = next(r for f, r in figures.items() if "submit" in f and "running" in f)
    p50, p99 = numbers(delay["measured"])
    assert 0 <= p50 <= p99
    text = (tmp_path / "RESULTS.md").read_text()
    assert "CPU ms/job" in text
    assert "peak RSS" in text
