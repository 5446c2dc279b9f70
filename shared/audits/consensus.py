"""One finding per criterion from the samples of an audit: the majority, and how strong it is.

An audit asked for `samples` n makes n independent model calls with the same request
(shared/audits/samples.py). Every sample that answered judged every criterion; for each
criterion the audit keeps:

- **verdict**: the verdict most samples gave. A tie goes to the more severe verdict,
  `fail` > `partial` > `pass` > `not_applicable`: an audit that cannot tell whether a
  criterion failed says it failed, and shows the doubt in `agreement`;
- **score**: the median of the scores of the samples that gave that verdict. A median over
  every sample could contradict the verdict it stands beside (`fail` from two samples at
  40 and 45, `pass` from two at 90, `partial` from one at 60: `fail` with 60). Each
  verdict's scores lie in its band (shared/llm/schemas.py, `SCORE_BANDS`), and so does
  their median;
- **rationale**: that of the first sample, in the order they were asked, that gave it;
- **evidence**: every quote of any sample, each once, in the order first given; each was
  verified against the content already;
- **agreement**: the share of the samples that gave the verdict (1: all of them).

`agreement` of the whole result is the mean of its findings'. The summary is that of the
sample whose verdicts match the kept ones most often (the first of those tied): another
sample's could contradict the findings shown beside it. With one sample, each finding is
the sample's own, with agreement 1.

Pure functions, as shared/audits/scoring.py: the property tests hold them to these rules.
"""

import math
import statistics
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from shared.audits.schemas import Finding, Verdict

# Which verdict a tie goes to: the most severe.
SEVERITY = {"fail": 3, "partial": 2, "pass": 1, "not_applicable": 0}
_DIGITS = 4


@dataclass(frozen=True)
class Sample:
    """One sample's answer: its findings in the criteria's order, and its summary."""

    findings: Sequence[Finding]
    summary: str


@dataclass(frozen=True)
class Consensus:
    findings: list[Finding]
    summary: str
    agreement: float


def majority_verdict(verdicts: Sequence[Verdict]) -> Verdict:
    """The verdict given most often; a tie goes to the more severe."""
    counts = Counter(verdicts)
    return max(counts, key=lambda verdict: (counts[verdict], SEVERITY[verdict]))


def combine_finding(judgements: Sequence[Finding]) -> Finding:
    """One criterion's finding from each sample's judgement of it (at least one)."""
    verdict = majority_verdict([j.verdict for j in judgements])
    agreeing = [j for j in judgements if j.verdict == verdict]
    return Finding(
        criterion_id=judgements[0].criterion_id,
        verdict=verdict,
        score=statistics.median(j.score for j in agreeing),
        rationale=agreeing[0].rationale,
        evidence=list(dict.fromkeys(quote for j in judgements for quote in j.evidence)),
        agreement=round(_agreement(judgements), _DIGITS),
    )


def _agreement(judgements: Sequence[Finding]) -> float:
    """The share of the judgements that gave the majority verdict, unrounded."""
    verdict = majority_verdict([j.verdict for j in judgements])
    return sum(j.verdict == verdict for j in judgements) / len(judgements)


def combine(samples: Sequence[Sample]) -> Consensus:
    """The audit's findings, summary and agreement from its answered samples (at least one)."""
    by_criterion = list(zip(*(sample.findings for sample in samples), strict=True))
    findings = [combine_finding(judgements) for judgements in by_criterion]
    # From the unrounded shares: a mean of rounded ones would round twice.
    agreement = math.fsum(_agreement(judgements) for judgements in by_criterion) / len(findings)
    return Consensus(
        findings=findings,
        summary=_closest(samples, findings).summary,
        agreement=round(agreement, _DIGITS),
    )


def _closest(samples: Sequence[Sample], kept: Sequence[Finding]) -> Sample:
    """The first sample whose verdicts match the kept ones most often."""

    def matches(sample: Sample) -> int:
        return sum(s.verdict == k.verdict for s, k in zip(sample.findings, kept, strict=True))

    return max(samples, key=matches)  # max keeps the first of equals
