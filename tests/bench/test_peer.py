from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_peer_quick_runs_the_job_on_celery_and_on_auditq(tmp_path: Path) -> None:
    rows = run_quick("peer", tmp_path / "RESULTS.md")

    throughput = next(r for r in rows if "audits/s" in r["figure"])
    _, auditq_rate, celery_rate = numbers(throughput["measured"])
    assert auditq_rate > 0
    assert celery_rate > 0
    memory = next(r for r in rows if "memory" in r["figure"])
    assert all(mib > 0 for mib in numbers(memory["measured"]))
