from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_metrics_quick_measures_scrapes_and_overhead(tmp_path: Path) -> None:
    rows = run_quick("metrics", tmp_path / "RESULTS.md")

    figures = {r["figure"]: r for r in rows}
    uncached = next(r for f, r in figures.items() if "scrape CPU, uncached" in f)
    cached = next(r for f, r in figures.items() if "scrape CPU, cached" in f)
    assert numbers(uncached["measured"])[0] > 0
    assert numbers(cached["measured"])[0] > 0
    for what in ("submit req/s", "worker audits/s"):
        ratio, on, off = numbers(figures[f"12 {what}, metrics on vs off"]["measured"])
        assert ratio > 0
        assert on > 0
        assert off > 0
