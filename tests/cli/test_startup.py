"""`auditq` starts fast: its help and client commands load no server-side library.

Timing on a shared machine would be a flaky test; what makes the command slow is what
it imports, so that is what is checked (bench/RESULTS.md has the measured times).
"""

import json
import subprocess
import sys

import pytest

SERVER_SIDE = {"fastapi", "starlette", "sqlalchemy", "sqlmodel", "openai", "uvicorn", "arq"}
SERVER_SIDE |= {"asyncpg", "redis", "alembic", "structlog", "pydantic_settings"}

LOADED = """
import json, sys
from cli.main import app
try:
    app(sys.argv[1:])
except SystemExit:
    pass
print(json.dumps(sorted({name.split(".")[0] for name in sys.modules})))
"""


def loaded_packages(*args: str) -> set[str]:
    """The top-level packages `auditq ARGS` has imported by the time it exits."""
    done = subprocess.run(
        [sys.executable, "-c", LOADED, *args], capture_output=True, text=True, check=True
    )
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize(
    "args", [["--help"], ["batch", "submit", "--help"], ["dev", "--help"], ["simulator", "--help"]]
)
def test_help_loads_neither_the_servers_nor_the_http_client(args: list[str]) -> None:
    loaded = loaded_packages(*args)

    assert not loaded & (SERVER_SIDE | {"httpx"})


def test_a_client_command_loads_only_the_http_client() -> None:
    args = ["batch", "status", "00000000-0000-0000-0000-000000000000"]

    loaded = loaded_packages(*args, "--api-url", "http://127.0.0.1:9")

    assert "httpx" in loaded  # it did try to reach the API
    assert not loaded & SERVER_SIDE
