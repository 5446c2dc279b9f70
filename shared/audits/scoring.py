"""The overall score and verdict, computed by auditq from the model's findings.

The model judges each criterion; auditq does the arithmetic, so a score never
depends on the model adding up correctly:

- `score` is the weighted mean of the findings' scores, leaving out the
  `not_applicable` ones; when no criterion applies it is null.
- `verdict` is `pass` when `score >= pass_threshold` and no finding is `fail`;
  when nothing applies there is nothing to fail, so it is `pass`.
"""

import math
from collections.abc import Sequence

from shared.audits.schemas import AuditResult, Criterion, Finding


def weighted_score(findings: Sequence[Finding], criteria: Sequence[Criterion]) -> float | None:
    weights = {criterion.id: criterion.weight for criterion in criteria}
    applicable = [f for f in findings if f.verdict != "not_applicable"]
    # fsum: a plain float sum depends on the order of its terms, and so would the rounded score.
    total_weight = math.fsum(weights[f.criterion_id] for f in applicable)
    if total_weight == 0:
        return None
    weighted = math.fsum(f.score * weights[f.criterion_id] for f in applicable)
    return round(weighted / total_weight, 2)


def overall_verdict(
    score: float | None, findings: Sequence[Finding], *, pass_threshold: float
) -> str:
    if any(f.verdict == "fail" for f in findings):
        return "fail"
    return "pass" if score is None or score >= pass_threshold else "fail"


def build_result(
    *,
    findings: Sequence[Finding],
    criteria: Sequence[Criterion],
    summary: str,
    pass_threshold: float,
    dropped_quotes: int = 0,
    agreement: float | None = None,
    samples: int | None = None,
) -> AuditResult:
    """The result of findings already combined from their samples (shared/audits/consensus.py)."""
    score = weighted_score(findings, criteria)
    return AuditResult.model_validate(
        {
            "score": score,
            "verdict": overall_verdict(score, findings, pass_threshold=pass_threshold),
            "pass_threshold": pass_threshold,
            "summary": summary,
            "findings": list(findings),
            "dropped_quotes": dropped_quotes,
            "agreement": agreement,
            "samples": samples,
        }
    )
