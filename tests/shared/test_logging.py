"""Log lines: JSON for machines, lines for people on a terminal, UTF-8 in both."""

import io
import json
import logging
import sys
from collections.abc import Iterator

import pytest
import structlog

from shared.logging import LogFormat, configure_logging


class Terminal(io.StringIO):
    """A stdout that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def json_again_afterwards() -> Iterator[None]:
    yield
    configure_logging("INFO", "json")


def logged(log_format: LogFormat, stdout: io.StringIO, monkeypatch: pytest.MonkeyPatch) -> str:
    """What one auditq event and one library record write to `stdout` in `log_format`."""
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setenv("NO_COLOR", "1")
    configure_logging("INFO", log_format)
    structlog.get_logger("auditq.test").info("audit_started", subject="Flasche ◆ 100 % recycelt")
    logging.getLogger("arq.worker").warning("Redis ◆ went away")
    return stdout.getvalue()


def test_json_lines_keep_utf8_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = logged("json", io.StringIO(), monkeypatch).splitlines()

    events = [json.loads(line) for line in lines]
    assert [event["event"] for event in events] == ["audit_started", "Redis ◆ went away"]
    assert events[0]["subject"] == "Flasche ◆ 100 % recycelt"
    assert "◆" in lines[0]
    assert "\\u25c6" not in "".join(lines)


def test_console_lines_are_for_people(monkeypatch: pytest.MonkeyPatch) -> None:
    lines = logged("console", io.StringIO(), monkeypatch).splitlines()

    assert len(lines) == 2
    assert not any(line.startswith("{") for line in lines)
    assert "audit_started" in lines[0]
    assert "subject='Flasche ◆ 100 % recycelt'" in lines[0]
    assert "Redis ◆ went away" in lines[1]
    assert "\x1b[" not in "".join(lines)  # NO_COLOR


def test_auto_renders_for_people_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    output = logged("auto", Terminal(), monkeypatch)

    assert "audit_started" in output
    assert not output.startswith("{")


def test_auto_writes_json_elsewhere(monkeypatch: pytest.MonkeyPatch) -> None:
    output = logged("auto", io.StringIO(), monkeypatch)

    assert json.loads(output.splitlines()[0])["event"] == "audit_started"
