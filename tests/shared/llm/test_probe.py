"""The worker's one-time look at the model provider: a clear line in the log, never a failure."""

import json
from typing import Any

import pytest

from cli.dev import free_port
from shared.config import Settings
from shared.llm import create_client
from shared.llm.probe import probe_provider
from shared.logging import configure_logging
from tests.fixtures.simulator import SimulatorHandle


async def probe(base_url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """The one event the probe of `base_url` logged."""
    configure_logging("INFO", "json")
    capsys.readouterr()
    settings = Settings(openai_base_url=base_url, openai_api_key=None, openai_timeout_s=5)
    async with create_client(settings) as client:
        await probe_provider(client, model="gpt-4o-mini")
    lines = capsys.readouterr().out.splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    assert len(events) == 1, events
    return events[0]


async def test_a_provider_that_answers_is_logged_as_ok(
    sim: SimulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    event = await probe(sim.base_url, capsys)

    assert (event["event"], event["level"]) == ("model_provider_ok", "info")
    assert event["base_url"] == sim.base_url + "/"
    assert event["models_listed"] == 1


async def test_an_unreachable_provider_is_a_warning_naming_url_and_reason(
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()  # nothing listens there

    event = await probe(f"http://127.0.0.1:{port}/v1", capsys)

    assert (event["event"], event["level"]) == ("model_provider_unreachable", "warning")
    assert event["base_url"] == f"http://127.0.0.1:{port}/v1/"
    assert event["reason"] == f"could not reach the model provider at 127.0.0.1:{port}"
    assert "OPENAI_BASE_URL" in event["hint"]


async def test_a_server_without_a_model_list_is_not_an_error(
    sim: SimulatorHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    root_url = sim.base_url.removesuffix("/v1")  # GET /models there is a 404

    event = await probe(root_url, capsys)

    assert (event["event"], event["level"]) == ("model_provider_ok", "info")
    assert event["models_listed"] is None
