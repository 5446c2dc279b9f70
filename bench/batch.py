"""Placeholder."""

from bench.common import Run
from bench.results import Section


def run(run_: Run) -> list[Section]:
    raise NotImplementedError
