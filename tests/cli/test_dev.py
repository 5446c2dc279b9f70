"""`auditq dev` (what `make run` runs): options, early checks, and what it starts."""

import socket
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cli import dev
from cli.main import app
from shared.config import Settings


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield listener.getsockname()[1]


def test_a_port_in_use_is_refused_before_anything_starts(
    busy_port: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DATABASE_URL", raising=False)

    result = CliRunner().invoke(app, ["dev", "--port", str(busy_port)])

    assert result.exit_code == 1
    assert f"port {busy_port} is in use" in result.output
    assert "make run ARGS=" in result.output
    assert not (tmp_path / ".auditq").exists()  # no embedded server was started


def test_a_bad_simulator_option_is_refused_at_once() -> None:
    result = CliRunner().invoke(app, ["dev", "--simulator-latency-ms", "slow"])

    assert result.exit_code == 2
    assert "--simulator-latency-ms" in result.output


class Spawned:
    """A supervisor that records what it would start, and stops at once."""

    def __init__(self) -> None:
        self.started: dict[str, list[str]] = {}
        self.environments: dict[str, dict[str, str]] = {}

    def spawn(self, name: str, args: list[str], env: Mapping[str, str]) -> str:
        self.started[name] = args
        self.environments[name] = dict(env)
        return name

    def wait_for_port(self, child: Any, host: str, port: int) -> None:
        pass

    def watch(self) -> None:
        raise dev.StopRequested("SIGINT")


def run_stack(options: dev.DevOptions, env: dict[str, str]) -> Spawned:
    supervisor = Spawned()
    with pytest.raises(dev.StopRequested):
        dev._run_stack(supervisor, env, options)  # type: ignore[arg-type]
    return supervisor


def options(port: int, **overrides: Any) -> dev.DevOptions:
    return dev.DevOptions(
        **{"api_only": False, "host": "127.0.0.1", "port": port, "workers": 2, **overrides}
    )


def test_without_a_key_the_simulator_gets_its_options() -> None:
    simulator = dev.SimulatorOptions(latency_ms="200..2000", fault_rate=0.2, faults="429,500")

    started = run_stack(options(dev.free_port(), simulator=simulator), {}).started

    assert list(started) == ["simulator", "api", "worker.1", "worker.2"]
    args = started["simulator"]
    assert {"--latency-ms=200..2000", "--fault-rate=0.2", "--faults=429,500"} <= set(args)


def test_with_metrics_port_each_worker_starts_from_a_port_of_its_own() -> None:
    env = {"OPENAI_API_KEY": "sk-real", "METRICS_PORT": "9100"}

    spawned = run_stack(options(dev.free_port(), workers=3), env)

    ports = [spawned.environments[f"worker.{n}"]["METRICS_PORT"] for n in (1, 2, 3)]
    assert ports == ["9100", "9101", "9102"]
    [line] = dev._metrics_lines(options(8000, workers=3), env)
    assert "9100, 9101, 9102" in line


def test_without_metrics_port_the_workers_serve_no_metrics() -> None:
    spawned = run_stack(options(dev.free_port()), {"OPENAI_API_KEY": "sk-real"})

    assert all("METRICS_PORT" not in env for env in spawned.environments.values())
    assert dev._metrics_lines(options(8000), {}) == []


def test_api_only_starts_neither_worker_nor_simulator() -> None:
    started = run_stack(options(dev.free_port(), api_only=True), {}).started

    assert list(started) == ["api"]


def test_with_a_key_the_banner_names_the_model_and_where_it_is() -> None:
    env = {"OPENAI_API_KEY": "sk-real", "OPENAI_BASE_URL": "http://gpu-box:8000/v1"}

    line = dev._model_line({**env, "OPENAI_MODEL": "qwen2.5-7b"})
    default = dev._model_line({"OPENAI_API_KEY": "sk-real"})

    assert line.startswith("model qwen2.5-7b at http://gpu-box:8000/v1")
    assert default.startswith("model gpt-4o-mini at https://api.openai.com/v1")


@pytest.mark.parametrize(("tty", "expected"), [(True, "console"), (False, None)])
def test_children_log_for_people_when_dev_runs_on_a_terminal(
    tty: bool, expected: str | None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: tty)

    assert dev._environment().get("LOG_FORMAT") == expected


def test_an_explicit_log_format_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LOG_FORMAT", "json")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    assert dev._environment()["LOG_FORMAT"] == "json"


def test_the_secret_key_is_made_once_and_kept_private(tmp_path: Path) -> None:
    root = tmp_path / ".auditq"

    first = dev.kept_secret_key(root)
    again = dev.kept_secret_key(root)

    assert first == again
    assert Settings(secret_key=first).secret_key is not None  # long enough to be accepted
    assert stat.S_IMODE((root / "secret_key").stat().st_mode) == 0o600
    assert dev.kept_secret_key(tmp_path / "another checkout") != first
