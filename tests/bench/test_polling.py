from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_polling_quick_times_polls_under_load(tmp_path: Path) -> None:
    rows = run_quick("polling", tmp_path / "RESULTS.md")

    latency = next(r for r in rows if "latency" in r["figure"])
    assert numbers(latency["measured"])[-1] > 0
    throughput = next(r for r in rows if "throughput" in r["figure"])
    assert numbers(throughput["measured"])[0] > 0
