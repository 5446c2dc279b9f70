"""Every setting reaches a deployment: `.env.example`, `compose.yaml` and the README list it.

A setting added to `shared/config.py` and forgotten in one of them fails here; so does
a variable of `.env.example` that compose does not hand to the api and the worker (a
key put in `.env` would otherwise never reach the containers).
"""

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.config import Settings

ROOT = Path(__file__).resolve().parents[1]
APP_SERVICES = ("api", "worker")
# Set by compose itself: the services' own addresses, and the port the image listens on.
SET_BY_COMPOSE = {"DATABASE_URL", "REDIS_URL", "PORT"}
# Settings compose turns on with a default of its own: the workers' metrics, which the
# `monitoring` profile's Prometheus scrapes.
COMPOSE_DEFAULTS = {"worker": {"METRICS_PORT": "${METRICS_PORT:-9100}"}}
# Read by the CLI or by compose.yaml, never by the services.
NOT_FOR_SERVICES = {"AUDITQ_API_URL", "AUDITQ_API_KEY", "POSTGRES_PASSWORD", "AUDITQ_PORT"}


def settings_variables() -> set[str]:
    """The environment variables `Settings` reads."""
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names.add(alias.upper() if isinstance(alias, str) else name.upper())
    return names


def env_example_variables() -> set[str]:
    """`NAME=value` lines of `.env.example`, commented out or not."""
    text = (ROOT / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def readme_variables() -> set[str]:
    """The rows of the README's settings table."""
    return set(re.findall(r"^\| `([A-Z][A-Z0-9_]*)` \|", (ROOT / "README.md").read_text(), re.M))


def compose_environment(service: str) -> dict[str, Any]:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    environment = compose["services"][service].get("environment") or {}
    if isinstance(environment, list):  # the `- NAME=value` form
        environment = dict(item.partition("=")[::2] for item in environment)
    return dict(environment)


def test_env_example_lists_every_setting() -> None:
    missing = settings_variables() - env_example_variables()

    assert not missing, f"add to .env.example, with the default: {sorted(missing)}"


def test_readme_documents_every_setting() -> None:
    missing = settings_variables() - readme_variables()

    assert not missing, f"add to the README's settings table: {sorted(missing)}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_hands_every_variable_to_the_service(service: str) -> None:
    wanted = (env_example_variables() | settings_variables()) - NOT_FOR_SERVICES
    environment = compose_environment(service)

    missing = wanted - environment.keys()

    assert not missing, f"compose.yaml's {service} service never gets {sorted(missing)}"


@pytest.mark.parametrize("service", APP_SERVICES)
def test_compose_passes_settings_through_with_auditq_defaults(service: str) -> None:
    """`NAME: ${NAME:-}`: the value of the shell or `.env`, and auditq's default when empty."""
    environment = compose_environment(service)
    passed = environment.keys() - SET_BY_COMPOSE

    expected = {name: f"${{{name}:-}}" for name in passed} | COMPOSE_DEFAULTS.get(service, {})
    wrong = {name for name in passed if environment[name] != expected[name]}

    assert not wrong, f"compose.yaml's {service} service changes {sorted(wrong)}"


def test_the_variables_only_the_cli_and_compose_read_are_documented() -> None:
    assert env_example_variables() >= NOT_FOR_SERVICES


def test_docker_context_leaves_out_local_state() -> None:
    ignored = set((ROOT / ".dockerignore").read_text().split())

    assert {".venv/", ".auditq/", ".env", ".git/"} <= ignored
