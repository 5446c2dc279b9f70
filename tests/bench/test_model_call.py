from pathlib import Path

import pytest

from tests.bench.quick import numbers, run_quick

pytestmark = pytest.mark.bench


def test_model_call_quick_measures_both_calls_and_the_worst_reply(tmp_path: Path) -> None:
    rows = run_quick("model-call", tmp_path / "RESULTS.md")

    call = next(r for r in rows if "model call CPU" in r["figure"])
    assert all(n > 0 for n in numbers(call["measured"])[:2])
    worst = next(r for r in rows if "worst reply" in r["figure"])
    assert numbers(worst["measured"])[0] > 0
