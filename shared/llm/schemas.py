"""What the model is asked about, its reply, how the reply is checked, and what a call returns.

The model layer knows no domain: it is given criteria as `CriterionText` (id and
description, all the model sees) and answers with `ReplyFinding`s; the audits domain
maps those to its findings and does the scoring (shared/audits/findings.py).

Decisions taken here:
- Findings may come back in any order; they are returned in the criteria's order.
  The contract asks for every criterion id exactly once and nothing else; the order is ours
  to impose, and a second paid call to fix it would buy nothing.
- Keys the schema does not name are ignored rather than rejected: they change nothing
  we store. Missing keys, wrong types (no string for a number) and scores outside 0-100
  make the reply invalid.
- An evidence quote is kept when it appears in the content once runs of whitespace are
  collapsed on both sides (models re-flow line breaks and indentation); case and every
  other character must match. A kept quote is stored as the exact span of the content it
  matched, so evidence is always a literal substring of the content. Quotes that do not
  match, empty ones included, are dropped and counted.
"""

import json
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, NoReturn, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.llm.errors import InvalidModelOutput

Verdict = Literal["pass", "partial", "fail", "not_applicable"]
VERDICTS: tuple[str, ...] = get_args(Verdict)

_MAX_ECHOED_ID = 64


@dataclass(frozen=True, slots=True)
class CriterionText:
    """One criterion as the model is asked about it: its id and what it asks."""

    id: str
    description: str


class ReplyFinding(BaseModel):
    """One finding as the reply schema describes it."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    criterion_id: str
    verdict: Verdict
    score: Annotated[float, Field(ge=0, le=100)]
    rationale: str
    evidence: list[str]


class Reply(BaseModel):
    """The whole reply as the reply schema describes it."""

    model_config = ConfigDict(strict=True)

    findings: list[ReplyFinding]
    summary: str


@dataclass(frozen=True)
class ModelOutcome:
    """A validated answer of the model, with what it cost and where it came from."""

    findings: list[ReplyFinding]
    summary: str
    dropped_quotes: int
    prompt_tokens: int
    completion_tokens: int
    request_id: str | None
    prompt_version: str
    # Two when an invalid reply was asked again: both requests count against rate limits.
    model_calls: int = 1


def validate_reply(
    raw: str, *, criteria: Sequence[CriterionText], content: str
) -> tuple[list[ReplyFinding], str, int]:
    """Findings in the criteria's order, the summary, and how many quotes were dropped.

    Raises `InvalidModelOutput` saying what is wrong when the reply cannot be used.
    """
    reply = _parse_reply(raw)
    by_id = _findings_by_id(reply.findings, [c.id for c in criteria])
    checked = [_keep_present_quotes(by_id[criterion.id], content) for criterion in criteria]
    return [finding for finding, _ in checked], reply.summary, sum(n for _, n in checked)


def _keep_present_quotes(finding: ReplyFinding, content: str) -> tuple[ReplyFinding, int]:
    """The finding with only the quotes found in the content, and how many were dropped."""
    found = [find_quote(content, quote) for quote in finding.evidence]
    evidence = [span for span in found if span is not None]
    kept = finding.model_copy(update={"evidence": evidence})
    return kept, len(found) - len(evidence)


def _parse_reply(raw: str) -> Reply:
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidModelOutput(f"not JSON ({exc})") from None
    except RecursionError:
        raise InvalidModelOutput("JSON nested too deeply") from None
    try:
        return Reply.model_validate(document)
    except ValidationError as exc:
        raise InvalidModelOutput(f"wrong shape ({_describe(exc)})") from None


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not a JSON number")


def _describe(exc: ValidationError) -> str:
    """Where and what, without the offending values: they may quote the content."""
    problems = [
        f"{'.'.join(str(part) for part in error['loc']) or 'reply'}: {error['msg']}"
        for error in exc.errors(include_url=False, include_input=False)
    ]
    return "; ".join(problems[:5]) + ("; …" if len(problems) > 5 else "")


def _findings_by_id(findings: list[ReplyFinding], expected: list[str]) -> dict[str, ReplyFinding]:
    counts = Counter(f.criterion_id for f in findings)
    problems = [
        _listed("unknown criterion ids", [i for i in counts if i not in expected]),
        _listed("repeated criterion ids", [i for i in expected if counts[i] > 1]),
        _listed("missing criterion ids", [i for i in expected if i not in counts]),
    ]
    if any(problems):
        raise InvalidModelOutput("; ".join(p for p in problems if p))
    return {f.criterion_id: f for f in findings}


def _listed(label: str, ids: list[str]) -> str:
    if not ids:
        return ""
    return f"{label}: " + ", ".join(repr(i[:_MAX_ECHOED_ID]) for i in ids)


def find_quote(text: str, quote: str) -> str | None:
    """The span of `text` the quote matches, whitespace runs aside; None when it is not there."""
    words = quote.split()
    if not words:
        return None
    exact = quote.strip()
    if exact in text:
        return exact
    # Words in order, separated by any whitespace: finds re-flowed quotes in one C-level scan.
    match = re.search(r"\s+".join(map(re.escape, words)), text)
    return match.group() if match else None
