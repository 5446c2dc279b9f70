"""Fixtures of the client commands' tests: the API over loopback HTTP, and `auditq` against it."""

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from shared.config import Settings
from tests.fixtures.serving import serving

Auditq = Callable[..., Awaitable[Result]]


@pytest.fixture
def api_url(settings: Settings) -> Iterator[str]:
    with serving(settings) as url:
        yield url


@pytest.fixture
def auditq(api_url: str) -> Auditq:
    """Run `auditq ARGS…` with AUDITQ_API_URL pointing at the test's API."""
    runner = CliRunner()

    def invoke(args: tuple[str, ...]) -> Result:
        env = {"AUDITQ_API_URL": api_url}
        return runner.invoke(app, list(args), env=env, catch_exceptions=False)

    async def run(*args: str | Path) -> Result:
        return await asyncio.to_thread(invoke, tuple(str(arg) for arg in args))

    return run
