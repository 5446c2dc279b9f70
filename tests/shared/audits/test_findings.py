"""The audits domain's side of the model call: what is asked, what is kept."""

from typing import get_args

from shared.audits import schemas
from shared.audits.findings import asked_criteria, audit_findings
from shared.audits.schemas import Criterion, Finding
from shared.llm import schemas as llm_schemas
from shared.llm.schemas import CriterionText, ReplyFinding


def test_the_model_is_asked_ids_and_descriptions_without_weights() -> None:
    criteria = [
        Criterion(id="claims", description="Claims are substantiated.", weight=3),
        Criterion(id="tone", description="The tone is neutral."),
    ]

    assert asked_criteria(criteria) == [
        CriterionText(id="claims", description="Claims are substantiated."),
        CriterionText(id="tone", description="The tone is neutral."),
    ]


def test_the_models_findings_become_the_audits() -> None:
    replied = ReplyFinding(
        criterion_id="claims", verdict="partial", score=55.5, rationale="Half.", evidence=["a b"]
    )

    assert audit_findings([replied]) == [
        Finding(
            criterion_id="claims",
            verdict="partial",
            score=55.5,
            rationale="Half.",
            evidence=["a b"],
        )
    ]


def test_the_model_answers_with_the_verdicts_an_audit_reports() -> None:
    assert get_args(llm_schemas.Verdict) == get_args(schemas.Verdict)
