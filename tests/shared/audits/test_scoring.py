"""The overall score and verdict auditq computes from the model's findings."""

from typing import Any

import pytest

from shared.audits.schemas import Criterion, Finding
from shared.audits.scoring import build_result, overall_verdict, weighted_score


def criteria(**weights: float) -> list[Criterion]:
    return [Criterion(id=id_, description=f"About {id_}.", weight=w) for id_, w in weights.items()]


def finding(criterion_id: str, score: float, verdict: str = "pass", **extra: Any) -> Finding:
    return Finding.model_validate(
        {
            "criterion_id": criterion_id,
            "verdict": verdict,
            "score": score,
            "rationale": "Because.",
            "evidence": [],
            **extra,
        }
    )


def test_score_is_the_mean_weighted_by_criterion() -> None:
    findings = [finding("a", 90), finding("b", 60, "partial")]

    assert weighted_score(findings, criteria(a=1, b=2)) == 70.0  # (90 + 2*60) / 3
    assert weighted_score(findings, criteria(a=3, b=1)) == 82.5  # (3*90 + 60) / 4


def test_equal_weights_give_the_plain_mean() -> None:
    findings = [finding("a", 100), finding("b", 50, "partial"), finding("c", 0, "fail")]

    assert weighted_score(findings, criteria(a=1, b=1, c=1)) == 50.0


def test_not_applicable_findings_are_left_out_of_the_score() -> None:
    # A high weight and a zero score on the criterion that does not apply change nothing.
    findings = [finding("a", 80), finding("b", 0, "not_applicable")]

    assert weighted_score(findings, criteria(a=1, b=100)) == 80.0


def test_when_nothing_applies_the_score_is_null_and_the_audit_passes() -> None:
    findings = [finding("a", 0, "not_applicable"), finding("b", 0, "not_applicable")]

    result = build_result(
        findings=findings, criteria=criteria(a=1, b=2), summary="n/a", pass_threshold=70
    )

    assert result.score is None
    assert result.verdict == "pass"


def test_any_failed_criterion_fails_the_audit_whatever_the_score() -> None:
    findings = [finding("a", 100), finding("b", 100), finding("c", 30, "fail")]

    result = build_result(
        findings=findings, criteria=criteria(a=10, b=10, c=0.1), summary="s", pass_threshold=50
    )

    assert result.score is not None
    assert result.score > 99
    assert result.verdict == "fail"


@pytest.mark.parametrize(
    ("score", "threshold", "verdict"),
    [
        (70.0, 70.0, "pass"),  # the threshold itself passes
        (69.99, 70.0, "fail"),
        (70.01, 70.0, "pass"),
        (0.0, 0.0, "pass"),
        (100.0, 100.0, "pass"),
    ],
)
def test_the_threshold_is_inclusive(score: float, threshold: float, verdict: str) -> None:
    findings = [finding("a", score, "partial")]

    assert overall_verdict(score, findings, pass_threshold=threshold) == verdict


def test_a_score_that_lands_on_the_threshold_after_weighting_passes() -> None:
    findings = [finding("a", 100), finding("b", 55, "partial")]

    result = build_result(
        findings=findings, criteria=criteria(a=1, b=2), summary="s", pass_threshold=70
    )

    assert result.score == 70.0
    assert result.verdict == "pass"


def test_score_is_rounded_to_two_decimals() -> None:
    findings = [finding("a", 100), finding("b", 0, "fail"), finding("c", 0, "fail")]

    assert weighted_score(findings, criteria(a=1, b=1, c=1)) == 33.33
    assert weighted_score(findings[:2], criteria(a=2, b=1)) == 66.67


def test_build_result_keeps_findings_summary_threshold_and_dropped_quotes() -> None:
    findings = [finding("a", 80, evidence=["quoted"]), finding("b", 75)]

    result = build_result(
        findings=findings,
        criteria=criteria(a=1, b=1),
        summary="Fine overall.",
        pass_threshold=77.5,
        dropped_quotes=3,
    )

    assert result.score == 77.5
    assert result.verdict == "pass"
    assert result.pass_threshold == 77.5
    assert result.summary == "Fine overall."
    assert [f.criterion_id for f in result.findings] == ["a", "b"]
    assert result.findings[0].evidence == ["quoted"]
    assert result.dropped_quotes == 3
