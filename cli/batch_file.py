"""audits.jsonl: check every line locally, then cut the file into batches the API accepts.

Nothing is sent before the whole file has been read: a malformed line stops the
command with nothing submitted. Each batch carries an `Idempotency-Key` derived
from what it sends, so running the command again on the same file, after a crash
or a time-out, gets the batches created the first time instead of new ones.
"""

import difflib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.errors import CliError

if TYPE_CHECKING:
    from cli.api_client import ApiProblem, Issue

MAX_BATCH_AUDITS = 1000  # what POST /batches accepts
# Half the API's default MAX_BODY_BYTES: a batch of long contents is cut short rather than refused.
MAX_BATCH_BYTES = 8 * 1024 * 1024
KEY_PREFIX = "auditq-cli:v1"
# The fields of an audit of a batch (a POST /audits body less `callback_url`), to name a
# misspelled one.
AUDIT_FIELDS = (
    "subject",
    "content",
    "criteria",
    "rubric",
    "rubric_version",
    "model",
    "metadata",
    "pass_threshold",
    "priority",
    "samples",
)
_SHOWN_PROBLEMS = 10


@dataclass(frozen=True)
class Line:
    """One audit request of the file, with its 1-based line number."""

    number: int
    request: dict[str, Any]

    @property
    def canonical(self) -> str:
        return canonical_json(self.request)


@dataclass(frozen=True)
class Chunk:
    """The lines sent as one batch; `index` counts from 0 within the file."""

    index: int
    lines: list[Line]
    name: str | None

    @property
    def first_line(self) -> int:
        return self.lines[0].number

    @property
    def last_line(self) -> int:
        return self.lines[-1].number

    def label(self, *, count: int) -> str:
        return f"batch {self.index + 1}/{count} (lines {self.first_line}-{self.last_line})"

    def body(self) -> dict[str, Any]:
        """The POST /batches body: nothing in it depends on the file's layout, only its requests."""
        body: dict[str, Any] = {"audits": [line.request for line in self.lines]}
        if self.name is not None:
            body["name"] = self.name
        return body

    def idempotency_key(self) -> str:
        """The same lines, options and position in the file give the same key."""
        digest = hashlib.sha256(canonical_json(self.body()).encode()).hexdigest()
        return f"{KEY_PREFIX}:{digest}:{self.index}"

    def issues_in_file(self, problem: "ApiProblem") -> list[str]:
        """The problem's issues, those about an item naming its line in the file."""
        return [self._in_file(issue) for issue in problem.errors]

    def _in_file(self, issue: "Issue") -> str:
        match issue.loc:
            case ("body", "audits", int(position), *field) if 0 <= position < len(self.lines):
                where = ".".join(str(part) for part in field) or "the request"
                return f"line {self.lines[position].number}: {where}: {issue.msg}"
        return f"{'.'.join(str(part) for part in issue.loc)}: {issue.msg}"


class BadAuditFile(CliError):
    """Lines that are not audit requests; nothing was submitted."""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def read_lines(path: Path, *, rubric: str | None) -> list[Line]:
    """Every audit request of the file, or `BadAuditFile` naming the lines that are not."""
    lines: list[Line] = []
    problems: list[str] = []
    with path.open("rb") as file:
        for number, raw in enumerate(file, start=1):
            try:
                line = _parse(number, raw, rubric=rubric)
            except ValueError as exc:
                problems.append(f"line {number}: {exc}")
                continue
            if line is not None:
                lines.append(line)
    if problems:
        raise BadAuditFile(
            f"{path}: {len(problems)} malformed line(s); nothing was submitted",
            details=_first(problems),
        )
    if not lines:
        raise BadAuditFile(f"{path}: no audit requests in the file; nothing was submitted")
    return lines


def _parse(number: int, raw: bytes, *, rubric: str | None) -> Line | None:
    try:
        text = raw.decode("utf-8-sig" if number == 1 else "utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8 text (byte {exc.start + 1})") from None
    if not text.strip():
        return None
    try:
        request = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not valid JSON: {exc.msg} (column {exc.colno})") from None
    if not isinstance(request, dict):
        raise ValueError(f"expected a JSON object (one audit request), got {_kind(request)}")
    if "criteria" not in request and "rubric" not in request:
        if rubric is None:
            raise ValueError(_without_criteria(request))
        request["rubric"] = rubric
    return Line(number=number, request=request)


def _without_criteria(request: dict[str, Any]) -> str:
    """Why a line names no criteria: most often a misspelled field, named as the API would."""
    unknown = [name for name in request if name not in AUDIT_FIELDS]
    if not unknown:
        return "has neither `criteria` nor `rubric` (add one, or pass --rubric)"
    named = []
    for name in unknown:
        close = difflib.get_close_matches(name, AUDIT_FIELDS, n=1)
        named.append(f"`{name}`" + (f" (did you mean `{close[0]}`?)" if close else ""))
    return f"unknown field {', '.join(named)}; each line needs `criteria` or `rubric`"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"not valid JSON: {name} is not a JSON number")


def _kind(value: Any) -> str:
    names = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _first(problems: list[str]) -> list[str]:
    shown = problems[:_SHOWN_PROBLEMS]
    if len(problems) > _SHOWN_PROBLEMS:
        shown.append(f"… and {len(problems) - _SHOWN_PROBLEMS} more")
    return shown


def split(lines: list[Line], *, name: str | None) -> list[Chunk]:
    """Consecutive runs of at most 1,000 lines and `MAX_BATCH_BYTES`, in file order."""
    return [Chunk(index=index, lines=run, name=name) for index, run in enumerate(_runs(lines))]


def _runs(lines: list[Line]) -> Iterator[list[Line]]:
    run: list[Line] = []
    size = 0
    for line in lines:
        line_size = len(line.canonical.encode()) + 1
        if run and (len(run) == MAX_BATCH_AUDITS or size + line_size > MAX_BATCH_BYTES):
            yield run
            run, size = [], 0
        run.append(line)
        size += line_size
    if run:
        yield run
