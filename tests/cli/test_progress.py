"""Waiting rides out a restarting API for a while, and only that."""

import pytest

from cli.api_client import ApiProblem, ApiUnreachable
from cli.progress import Patience


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
