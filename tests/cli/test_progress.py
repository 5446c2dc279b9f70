"""Waiting rides out a restarting API for a while, and only that."""

from typing import Any

import pytest
from rich.progress import Progress, ProgressColumn
from rich.text import Text

from cli.api_client import ApiProblem, ApiUnreachable
from cli.progress import EtaColumn, Patience, RateColumn, Throughput


def unreachable() -> str:
    raise ApiUnreachable("http://127.0.0.1:1")


def not_found() -> str:
    raise ApiProblem(status=404, code="batch_not_found", detail="No batch.", errors=[])


def test_a_transient_failure_is_skipped_then_polling_goes_on() -> None:
    patience = Patience(seconds=60)

    assert patience.poll(unreachable) is None
    assert patience.poll(lambda: "batch") == "batch"


def test_a_failure_that_lasts_longer_than_the_patience_is_raised() -> None:
    patience = Patience(seconds=0)

    assert patience.poll(unreachable) is None
    with pytest.raises(ApiUnreachable):
        patience.poll(unreachable)


def test_a_client_error_is_raised_at_once() -> None:
    with pytest.raises(ApiProblem, match="batch_not_found"):
        Patience(seconds=60).poll(not_found)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_rate_and_eta_come_from_the_completions_seen() -> None:
    clock = Clock()
    throughput = Throughput(clock)

    first = throughput.observe(done=0, total=10)
    clock.now += 2
    nothing_yet = throughput.observe(done=0, total=10)
    clock.now += 2
    later = throughput.observe(done=4, total=10)

    assert first == nothing_yet == (None, None)
    assert later == (1.0, 6.0)  # 4 audits in 4 s; 6 left


def rendered(column: ProgressColumn, completed: int = 4, **fields: Any) -> str:
    progress = Progress()
    task_id = progress.add_task("waiting", total=10, completed=completed, **fields)
    text = column.render(progress.tasks[task_id])
    assert isinstance(text, Text)
    return text.plain


def test_the_bar_shows_the_rate_and_time_left() -> None:
    assert rendered(RateColumn(), rate=2.5, eta=3725) == "2.5/s"
    assert rendered(EtaColumn(), rate=2.5, eta=3725) == "eta 1:02:05"
    assert rendered(EtaColumn(), completed=10, rate=None, eta=None) == "eta 0:00:00"
    assert rendered(RateColumn(), rate=None, eta=None) == "-/s"
