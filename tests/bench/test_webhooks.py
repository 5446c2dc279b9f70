from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_webhooks_quick_measures_delivery_and_the_cost_to_audits(tmp_path: Path) -> None:
    rows = run_quick("webhooks", tmp_path / "RESULTS.md")

    figures = {r["figure"]: r for r in rows}
    delivered = next(r for f, r in figures.items() if "events delivered/s" in f)
    ratio = next(r for f, r in figures.items() if "with callbacks" in f)
    assert numbers(delivered["measured"])[0] > 0
    assert numbers(ratio["measured"])[0] > 0
    assert "end → 2xx" in (tmp_path / "RESULTS.md").read_text()
