"""Reading the files users hand to the commands, with errors that name the file."""

import json
from pathlib import Path
from typing import Any

from cli.errors import CliError


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise CliError(f"{path}: not UTF-8 text (byte {exc.start + 1})") from None
    except OSError as exc:
        raise CliError(f"{path}: cannot be read ({exc.strerror})") from None


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as exc:
        raise CliError(
            f"{path}: not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None


def read_object(path: Path) -> dict[str, Any]:
    value = read_json(path)
    if not isinstance(value, dict):
        raise CliError(f"{path}: expected a JSON object")
    return value


def read_criteria(path: Path) -> list[Any]:
    """A JSON list of criteria, or an object (a rubric file) with a `criteria` list."""
    value = read_json(path)
    criteria = value.get("criteria") if isinstance(value, dict) else value
    if not isinstance(criteria, list) or not criteria:
        raise CliError(
            f"{path}: expected a JSON list of criteria, each {{id, description, weight?}}"
        )
    return criteria
