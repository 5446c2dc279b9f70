"""The worker's one-time look at the model provider: a clear line in the log, never a failure."""

from collections.abc import Iterator
from typing import Any

import pytest
import structlog

from cli.dev import free_port
from shared.config import Settings
from shared.llm import create_client
from shared.llm.probe import probe_provider
from shared.logging import configure_logging
from tests.fixtures.simulator import SimulatorHandle


@pytest.fixture
def events() -> Iterator[list[dict[str, Any]]]:
    """The events logged during the test, as the JSON renderer would get them."""
    configure_logging("INFO", "json")
    caught: list[dict[str, Any]] = []

    def collect(logger: object, method: str, event: dict[str, Any]) -> dict[str, Any]:
        caught.append(dict(event))
        return event

    # The list every logger holds (shared/logging.py), just before the renderer.
    processors = structlog.get_config()["processors"]
    processors.insert(len(processors) - 1, collect)
    yield caught
    processors.remove(collect)


async def probe(base_url: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    """The one event the probe of `base_url` logged."""
    settings = Settings(openai_base_url=base_url, openai_api_key=None, openai_timeout_s=5)
    async with create_client(settings) as client:
        await probe_provider(client, model="gpt-4o-mini")
    assert len(events) == 1, events
    return events[0]


async def test_a_provider_that_answers_is_logged_as_ok(
    sim: SimulatorHandle, events: list[dict[str, Any]]
) -> None:
    event = await probe(sim.base_url, events)

    assert (event["event"], event["level"]) == ("model_provider_ok", "info")
    assert event["base_url"] == sim.base_url + "/"
    assert event["models_listed"] == 1


async def test_an_unreachable_provider_is_a_warning_naming_url_and_reason(
    events: list[dict[str, Any]],
) -> None:
    port = free_port()  # nothing listens there

    event = await probe(f"http://127.0.0.1:{port}/v1", events)

    assert (event["event"], event["level"]) == ("model_provider_unreachable", "warning")
    assert event["base_url"] == f"http://127.0.0.1:{port}/v1/"
    assert event["reason"] == f"could not reach the model provider at 127.0.0.1:{port}"
    assert "OPENAI_BASE_URL" in event["hint"]


async def test_a_server_without_a_model_list_is_not_an_error(
    sim: SimulatorHandle, events: list[dict[str, Any]]
) -> None:
    root_url = sim.base_url.removesuffix("/v1")  # GET /models there is a 404

    event = await probe(root_url, events)

    assert (event["event"], event["level"]) == ("model_provider_ok", "info")
    assert event["models_listed"] is None
