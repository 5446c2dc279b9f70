"""Between the audits domain and the model layer: criteria asked about, findings kept.

`shared.llm` knows no domain. It is asked about `CriterionText`s (weights stay here:
auditq scores with them, the model judges each criterion alone) and answers with its own
reply types, which become the audit's `Finding`s here.
"""

from collections.abc import Sequence

from shared.audits.schemas import Criterion, Finding
from shared.llm.schemas import CriterionText, ReplyFinding


def asked_criteria(criteria: Sequence[Criterion]) -> list[CriterionText]:
    """What the model is asked about each criterion."""
    return [CriterionText(id=c.id, description=c.description) for c in criteria]


def audit_findings(replied: Sequence[ReplyFinding]) -> list[Finding]:
    """The model's validated findings as the audit's."""
    return [
        Finding(
            criterion_id=f.criterion_id,
            verdict=f.verdict,
            score=f.score,
            rationale=f.rationale,
            evidence=list(f.evidence),
        )
        for f in replied
    ]
