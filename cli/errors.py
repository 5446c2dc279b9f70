"""What the client commands report, and the exit codes that tell a scheduler what happened."""

import functools
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import typer

from cli import output

EXIT_OK = 0
EXIT_AUDITS_FAILED = 1  # the command worked, but some audit failed or was cancelled
EXIT_ERROR = 2  # usage, bad input file, a problem from the API, or no API at all
EXIT_VERDICT_FAIL = 3  # --fail-on-verdict: the audit ran, and the content failed it

P = ParamSpec("P")
R = TypeVar("R")


class CliError(Exception):
    """A problem the user has to act on: its message (and details) go to stderr, exit 2."""

    def __init__(self, message: str, *, details: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details)


def reports_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turn a `CliError` raised by `command` into its message on stderr and exit code 2."""

    @functools.wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except CliError as error:
            output.error(error.message, error.details)
            raise typer.Exit(EXIT_ERROR) from None

    return run


def exit_code(*, unsuccessful: int) -> int:
    """0 when every audit succeeded, 1 when `unsuccessful` of them failed or were cancelled."""
    return EXIT_AUDITS_FAILED if unsuccessful else EXIT_OK
