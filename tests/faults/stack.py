"""auditq as a deployment runs it: the Procfile's `web` and `worker` commands, and the simulator.

Each process is a real child process configured only through the environment variables
of DESIGN §6, its output (JSON lines) kept in a file under the test's temporary directory,
so that a test can read what the processes logged and show it when it fails.
"""

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.fixtures.simulator import SimulatorHandle

ROOT = Path(__file__).resolve().parents[2]
# `uvicorn`, `arq` and `alembic` as the Procfile names them: the project's own.
VENV_BIN = Path(sys.executable).parent
READY_TIMEOUT_S = 60.0


def procfile() -> dict[str, str]:
    """The Procfile's commands by process type (`release`, `web`, `worker`)."""
    commands: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, colon, command = line.partition(":")
        if colon and name.strip() and not name.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


def free_port() -> int:
    """A port free a moment ago; nothing else in the suite binds ports at random."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class Process:
    """One child process; stdout and stderr go to `<log_dir>/<name>.log`."""

    def __init__(self, name: str, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"{name}.log"
        self._log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            argv,
            cwd=ROOT,
            env=dict(env),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    async def exit_code(self, *, within: float) -> int:
        """Wait for the process to exit; its exit code (negative: the signal that ended it)."""
        deadline = time.monotonic() + within
        while self.process.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.name} did not exit within {within}s\n{self.output()}")
            await asyncio.sleep(0.05)
        return self.process.returncode

    def output(self, tail: int = 6000) -> str:
        text = self.log_path.read_text(errors="replace")
        return f"--- {self.name} ({self.log_path}) ---\n{text[-tail:]}"

    def events(self) -> list[dict[str, Any]]:
        """The JSON lines the process wrote (structlog events), oldest first."""
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue  # a line cut short by SIGKILL
        return events

    def stop(self) -> None:
        if self.alive():
            self.process.kill()
        self.process.wait(timeout=30)
        self._log.close()


class Api:
    """The `web` process and the URL of its API."""

    def __init__(self, process: Process, port: int) -> None:
        self.process = process
        self.root_url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.root_url}/api/v1"


class Stack:
    """Starts auditq's processes from the Procfile with one environment, and reaps them all."""

    def __init__(self, env: Mapping[str, str], log_dir: Path) -> None:
        self.env = {
            **os.environ,
            "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
            "PYTHONUNBUFFERED": "1",  # a SIGKILL must not take buffered log lines with it
            **env,
        }
        self.log_dir = log_dir
        self.processes: list[Process] = []
        self._commands = procfile()
        self._names: dict[str, int] = {}

    def _spawn(self, kind: str, argv: list[str], env: Mapping[str, str]) -> Process:
        number = self._names[kind] = self._names.get(kind, 0) + 1
        process = Process(f"{kind}.{number}", argv, env, self.log_dir)
        self.processes.append(process)
        return process

    def _procfile_argv(self, kind: str) -> list[str]:
        # `exec`: the signals a test sends reach uvicorn or arq, not the shell.
        return ["/bin/sh", "-c", f"exec {self._commands[kind]}"]

    async def start_web(self) -> Api:
        port = free_port()
        process = self._spawn("web", self._procfile_argv("web"), {**self.env, "PORT": str(port)})
        api = Api(process, port)
        await wait_until_answers(f"{api.base_url}/health/live", process)
        return api

    def start_worker(self) -> Process:
        return self._spawn("worker", self._procfile_argv("worker"), self.env)

    def workers(self) -> list[Process]:
        return [p for p in self.processes if p.name.startswith("worker.")]

    def worker_events(self) -> list[dict[str, Any]]:
        return [event for worker in self.workers() for event in worker.events()]

    def outputs(self) -> str:
        return "\n".join(process.output() for process in self.processes)

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


async def wait_until_answers(
    url: str, process: Process, *, within: float = READY_TIMEOUT_S
) -> None:
    deadline = time.monotonic() + within
    async with httpx.AsyncClient(timeout=2) as client:
        while time.monotonic() < deadline and process.alive():
            try:
                if (await client.get(url)).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError(f"{url} did not answer within {within}s\n{process.output()}")


@contextmanager
def simulator_process(
    log_dir: Path,
    *,
    fault_rate: float = 0.0,
    faults: str = "429,500,hang,malformed",
    latency_ms: str = "0",
    retry_after_s: int = 1,
    seed: int = 0,
) -> Iterator[SimulatorHandle]:
    """`auditq simulator` in fault mode, as a process of its own."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "cli.simulator",
        f"--port={port}",
        f"--fault-rate={fault_rate}",
        f"--faults={faults}",
        f"--latency-ms={latency_ms}",
        f"--retry-after-s={retry_after_s}",
        f"--seed={seed}",
    ]
    process = Process("simulator", argv, os.environ, log_dir)
    handle = SimulatorHandle(f"http://127.0.0.1:{port}")
    try:
        _wait_sync(f"http://127.0.0.1:{port}/health", process)
        yield handle
    finally:
        handle.close()
        process.signal(signal.SIGTERM)
        try:
            process.process.wait(timeout=10)
        finally:
            process.stop()


def _wait_sync(url: str, process: Process) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline and process.alive():
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.05)
    raise AssertionError(f"the simulator did not start\n{process.output()}")
