"""auditq as a deployment runs it: the Procfile's `web` and `worker` commands.

Each process is a real child process configured only through the environment variables
of `.env.example` (tests/fixtures/processes.py keeps its output).
"""

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx

from cli.dev import free_port
from tests.fixtures.processes import READY_TIMEOUT_S, ROOT, Process

# `uvicorn`, `arq` and `alembic` as the Procfile names them: the project's own.
VENV_BIN = Path(sys.executable).parent


def procfile() -> dict[str, str]:
    """The Procfile's commands by process type (`release`, `web`, `worker`)."""
    commands: dict[str, str] = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, colon, command = line.partition(":")
        if colon and name.strip() and not name.lstrip().startswith("#"):
            commands[name.strip()] = command.strip()
    return commands


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
        # Its metrics directory (WEB_CONCURRENCY > 1) under the test's: a SIGKILL leaves it.
        env = {**self.env, "PORT": str(port), "TMPDIR": str(self.log_dir)}
        process = self._spawn("web", self._procfile_argv("web"), env)
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


def auditq_command(env: Mapping[str, str], *args: str) -> str:
    """`auditq ARGS` as ops run it, with these variables set; its stdout."""
    done = subprocess.run(
        [str(VENV_BIN / "auditq"), *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


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
