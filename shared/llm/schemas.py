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
  match, empty ones included, are dropped and counted. The search is linear
  (shared/llm/quotes.py).
- A reply is bounded (`REPLY_LIMITS`), so that no reply, however verbose or hostile, can
  hold the worker's event loop or bloat the audit row. At most:
  - 1,000 characters per evidence quote (a passage, not the page);
  - 5 quotes per finding, and 100 per reply: for more than 20 criteria, 100 // criteria
    each (2 for 50 criteria). Each quote is one search of the whole content, so the count
    bounds the search;
  - 2,000 characters per rationale ("one to three sentences"), 4,000 for the summary;
  - the reply's text: six times the largest reply these allow (a character of a JSON
    string takes at most six), refused before it is parsed.

  The quote counts travel in the reply schema (`maxItems`); OpenAI's strict structured
  outputs accept no length keyword for strings, so lengths are named in the schema's
  descriptions and enforced here. A reply beyond a bound is invalid output: asked again
  once, with the bound named, then `invalid_model_output`. The worst reply the bounds
  allow, against 100,000 characters of content, is validated in milliseconds
  (bench/RESULTS.md, section 8), where one 40,000-character quote took 8 s before.
- A reply must agree with itself: each verdict allows a band of scores (`SCORE_BANDS`,
  stated in the system prompt), and a finding outside its band (`fail` with 100, `pass`
  with 0) is invalid output, asked again once like any other. The bands sit at the middle
  of the scale, where the prompt's "100: fully, 0: not at all" puts the line between a
  criterion met and one not met: `pass` scores 50 or more, `fail` 50 or less, `partial`
  neither 0 nor 100 (met in part is neither "not at all" nor "fully"). `not_applicable`
  allows any score: auditq leaves it out of the audit's score. The bands catch a reply
  that contradicts itself; where an audit passes is `pass_threshold`'s business
  (shared/audits/scoring.py).
"""

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Literal, NoReturn, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.llm.errors import InvalidKind, InvalidModelOutput
from shared.llm.quotes import QuoteFinder
from shared.llm.usage import TokenUsage

Verdict = Literal["pass", "partial", "fail", "not_applicable"]
VERDICTS: tuple[str, ...] = get_args(Verdict)

_MAX_ECHOED_ID = 64
# A character of a JSON string takes at most six: `\uXXXX`.
_JSON_ESCAPE_FACTOR = 6
# Keys, criterion id, verdict and score of a finding, generously.
_FINDING_OVERHEAD_CHARS = 300


@dataclass(frozen=True)
class ReplyLimits:
    """How large a reply may be (see the module docstring for why these numbers)."""

    quote_chars: int = 1_000
    quotes_per_finding_cap: int = 5
    quotes_per_reply: int = 100
    rationale_chars: int = 2_000
    summary_chars: int = 4_000

    def quotes_per_finding(self, criteria: int) -> int:
        """Evidence quotes one finding may give when the reply has `criteria` findings."""
        return max(1, min(self.quotes_per_finding_cap, self.quotes_per_reply // max(criteria, 1)))

    def reply_chars(self, criteria: int) -> int:
        """The longest reply text worth parsing: beyond it, some bound is exceeded."""
        finding = (
            self.quotes_per_finding(criteria) * self.quote_chars
            + self.rationale_chars
            + _FINDING_OVERHEAD_CHARS
        )
        largest = criteria * finding + self.summary_chars + _FINDING_OVERHEAD_CHARS
        return _JSON_ESCAPE_FACTOR * largest


REPLY_LIMITS = ReplyLimits()


@dataclass(frozen=True)
class ScoreBand:
    """The scores a verdict allows: from `low` to `high`, the ends excluded when `open`."""

    low: float
    high: float
    open: bool = False

    def holds(self, score: float) -> bool:
        if self.open:
            return self.low < score < self.high
        return self.low <= score <= self.high

    def __str__(self) -> str:
        if self.open:
            return f"more than {self.low:g} and less than {self.high:g}"
        return f"from {self.low:g} to {self.high:g}"


# Why these bands: the module docstring. The system prompt states them from this table.
SCORE_BANDS: dict[str, ScoreBand] = {
    "pass": ScoreBand(50, 100),
    "partial": ScoreBand(0, 100, open=True),
    "fail": ScoreBand(0, 50),
    "not_applicable": ScoreBand(0, 100),
}


@dataclass(frozen=True, slots=True)
class CriterionText:
    """One criterion as the model is asked about it: its id and what it asks."""

    id: str
    description: str


Quote = Annotated[str, Field(max_length=REPLY_LIMITS.quote_chars)]


class ReplyFinding(BaseModel):
    """One finding as the reply schema describes it."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False)

    criterion_id: str
    verdict: Verdict
    score: Annotated[float, Field(ge=0, le=100)]
    rationale: Annotated[str, Field(max_length=REPLY_LIMITS.rationale_chars)]
    evidence: Annotated[list[Quote], Field(max_length=REPLY_LIMITS.quotes_per_finding_cap)]


class Reply(BaseModel):
    """The whole reply as the reply schema describes it."""

    model_config = ConfigDict(strict=True)

    findings: list[ReplyFinding]
    summary: Annotated[str, Field(max_length=REPLY_LIMITS.summary_chars)]


@dataclass(frozen=True)
class ModelOutcome:
    """A validated answer of the model, with what it cost and where it came from."""

    findings: list[ReplyFinding]
    summary: str
    dropped_quotes: int
    # Every answered call: two when an invalid reply was asked again, both paid for.
    usage: TokenUsage
    request_id: str | None
    prompt_version: str
    # Where the answer came from (the audit's provenance): the model as the provider named
    # it in its reply (a dated snapshot, say), the SHA-256 of the reply schema sent, and the
    # sampling parameters as sent (None: not sent).
    served_model: str | None = None
    schema_sha256: str | None = None
    temperature: float | None = None
    seed: int | None = None
    # The kinds of the replies rejected before this one (a corrective call followed each).
    invalid_replies: tuple[InvalidKind, ...] = ()

    @property
    def model_calls(self) -> int:
        """Requests made: each counts against the rate limits."""
        return self.usage.calls


def validate_reply(
    raw: str, *, criteria: Sequence[CriterionText], content: str
) -> tuple[list[ReplyFinding], str, int]:
    """Findings in the criteria's order, the summary, and how many quotes were dropped.

    Raises `InvalidModelOutput` saying what is wrong when the reply cannot be used.
    """
    reply = _parse_reply(raw, limit=REPLY_LIMITS.reply_chars(len(criteria)))
    by_id = _findings_by_id(reply.findings, [c.id for c in criteria])
    _check_quote_counts(reply.findings, REPLY_LIMITS.quotes_per_finding(len(criteria)))
    _check_scores_agree_with_verdicts(reply.findings)
    finder = QuoteFinder(content)
    checked = [_keep_present_quotes(by_id[criterion.id], finder) for criterion in criteria]
    return [finding for finding, _ in checked], reply.summary, sum(n for _, n in checked)


def _keep_present_quotes(finding: ReplyFinding, finder: QuoteFinder) -> tuple[ReplyFinding, int]:
    """The finding with only the quotes found in the content, and how many were dropped."""
    found = [finder.find(quote) for quote in finding.evidence]
    evidence = [span for span in found if span is not None]
    kept = finding.model_copy(update={"evidence": evidence})
    return kept, len(found) - len(evidence)


def _parse_reply(raw: str, *, limit: int) -> Reply:
    if len(raw) > limit:
        # Checked before parsing: whatever it holds, some bound is exceeded.
        raise InvalidModelOutput(f"the reply is longer than {limit:,} characters", kind="bounds")
    try:
        document = json.loads(raw, parse_constant=_reject_constant)
    except ValueError as exc:
        raise InvalidModelOutput(f"not JSON ({exc})", kind="not_json") from None
    except RecursionError:
        raise InvalidModelOutput("JSON nested too deeply", kind="not_json") from None
    try:
        return Reply.model_validate(document)
    except ValidationError as exc:
        kind: InvalidKind = "bounds" if _only_too_long(exc) else "shape"
        raise InvalidModelOutput(f"wrong shape ({_describe(exc)})", kind=kind) from None


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
    known = set(expected)
    problems = [
        _listed("unknown criterion ids", [i for i in counts if i not in known]),
        _listed("repeated criterion ids", [i for i in expected if counts[i] > 1]),
        _listed("missing criterion ids", [i for i in expected if i not in counts]),
    ]
    if any(problems):
        raise InvalidModelOutput("; ".join(p for p in problems if p), kind="criterion_ids")
    return {f.criterion_id: f for f in findings}


def _check_quote_counts(findings: list[ReplyFinding], limit: int) -> None:
    over = [f.criterion_id for f in findings if len(f.evidence) > limit]
    if over:
        label = f"more than {limit} evidence quotes (the limit for this many criteria) for"
        raise InvalidModelOutput(_listed(label, over), kind="bounds")


def _check_scores_agree_with_verdicts(findings: list[ReplyFinding]) -> None:
    contradictions = [
        f"{f.criterion_id[:_MAX_ECHOED_ID]!r} is {f.verdict} with score {f.score:g} "
        f"(a {f.verdict} scores {SCORE_BANDS[f.verdict]})"
        for f in findings
        if not SCORE_BANDS[f.verdict].holds(f.score)
    ]
    if contradictions:
        reason = "verdicts contradict their scores: " + "; ".join(contradictions[:5])
        raise InvalidModelOutput(
            reason + ("; …" if len(contradictions) > 5 else ""), kind="contradiction"
        )


_TOO_LONG = frozenset({"string_too_long", "too_long"})


def _only_too_long(exc: ValidationError) -> bool:
    """Whether every problem is a string or a list beyond its bound."""
    return all(error["type"] in _TOO_LONG for error in exc.errors(include_url=False))


def _listed(label: str, ids: list[str]) -> str:
    if not ids:
        return ""
    return f"{label}: " + ", ".join(repr(i[:_MAX_ECHOED_ID]) for i in ids)
