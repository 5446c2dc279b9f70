"""The README's walk-through runs, command by command, against a live stack.

The API and a worker are started from the Procfile (real processes, as in the fault
suite); the model is the simulator. Each command of the walk-through's `sh` blocks is
run by bash as written, but for the API's address, `uv run` (the test's environment
is already synced) and the placeholders (`<id>`, `<batch-id>`), which are filled
from what the commands before printed. A command that fails, or an HTTP call the API
refuses, fails the test: a command in the README cannot rot.
"""

import json
import re
import shlex
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.config import Settings
from tests.faults.stack import VENV_BIN, Api, Stack
from tests.fixtures.simulator import SimulatorHandle

ROOT = Path(__file__).resolve().parents[1]
README_ADDRESS = "http://127.0.0.1:8000"
COMMAND_TIMEOUT_S = 180.0  # `batch submit --wait` on a loaded machine


def walkthrough() -> list[str]:
    """The commands of the README's walk-through, in order, each as one shell string."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## A five-minute walk-through", 1)[1].split("\n## ", 1)[0]
    commands: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
        commands += _commands_of(block)
    return commands


def _commands_of(block: str) -> list[str]:
    """Split a block at comment and blank lines that are not inside a quoted argument."""
    commands, pending = [], ""
    for line in block.splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        pending += line + "\n"
        if not line.endswith("\\") and _complete(pending):
            commands.append(pending.strip())
            pending = ""
    assert not pending, f"unfinished command in the README: {pending}"
    return commands


def _complete(command: str) -> bool:
    try:
        shlex.split(command, comments=True)
    except ValueError:  # a quote still open
        return False
    return True


@dataclass
class Walk:
    """What the commands printed that later ones refer to."""

    api: Api
    workdir: Path
    env: dict[str, str]
    found: dict[str, str] = field(default_factory=dict)

    def prepare(self, command: str) -> str:
        command = command.replace(README_ADDRESS, self.api.root_url)
        command = re.sub(r"^uv run ", f"{VENV_BIN}/", command)
        for placeholder, value in self.found.items():
            command = command.replace(placeholder, value)
        assert not re.search(r"<[a-z-]+>", command), f"a placeholder is not known: {command}"
        return command

    def run(self, command: str) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            ["bash", "-c", self.prepare(command)],
            cwd=self.workdir,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT_S,
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        if command.startswith("curl"):
            self._check_answer(command, done.stdout)
        batch = re.search(r"accepted as (\S+)", done.stderr)
        if batch:
            self.found["<batch-id>"] = batch.group(1)
        return done

    def _check_answer(self, command: str, output: str) -> None:
        """The API accepted the call; an audit it returns becomes `<id>`."""
        # -i: the status line and headers first (text mode has made their CRLFs LFs).
        headers, _, body = output.partition("\n\n") if " -si " in command else ("", "", output)
        if headers:
            status = int(headers.split()[1])
            assert 200 <= status < 300, f"{command}\n{output}"
        answer = json.loads(body)
        assert "code" not in answer, f"{command}\n{output}"  # a problem detail
        if isinstance(answer.get("id"), str):
            self.found["<id>"] = answer["id"]


@pytest.fixture
async def stack(
    settings: Settings, sim: SimulatorHandle, tmp_path: Path
) -> AsyncIterator[tuple[Api, Stack]]:
    env = {
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "QUEUE_NAME": settings.queue_name,
        "OPENAI_API_KEY": "sk-readme",
        "OPENAI_BASE_URL": sim.base_url,
        "LOG_FORMAT": "json",
    }
    stack = Stack(env, tmp_path / "logs")
    (tmp_path / "logs").mkdir()
    try:
        api = await stack.start_web()
        stack.start_worker()
        yield api, stack
    finally:
        stack.stop_all()


def test_the_walkthrough_has_the_commands_it_shows() -> None:
    commands = walkthrough()

    assert sum(command.startswith("curl") for command in commands) >= 3
    assert sum(command.startswith("uv run auditq") for command in commands) >= 3


async def test_every_command_of_the_walkthrough_works(
    stack: tuple[Api, Stack], tmp_path: Path
) -> None:
    api, processes = stack
    workdir = tmp_path / "clone"
    workdir.mkdir()
    (workdir / "examples").symlink_to(ROOT / "examples")
    walk = Walk(api, workdir, {**processes.env, "AUDITQ_API_URL": api.root_url})

    try:
        for command in walkthrough():
            walk.run(command)
    except AssertionError as failure:
        raise AssertionError(f"{failure}\n{processes.outputs()}") from None

    submitted = (ROOT / "examples" / "audits.jsonl").read_text().split("\n")
    results = (workdir / "results.jsonl").read_text().splitlines()
    assert len(results) == len([line for line in submitted if line.strip()])
    assert {json.loads(line)["status"] for line in results} == {"succeeded"}
