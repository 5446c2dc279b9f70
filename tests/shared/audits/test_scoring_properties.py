"""Properties of the score and verdict, for any findings a valid reply can hold."""

import itertools
import math
from typing import get_args

from hypothesis import assume, given
from hypothesis import strategies as st

from shared.audits.schemas import Criterion, Finding, Verdict
from shared.audits.scoring import build_result, weighted_score

VERDICTS = get_args(Verdict)

# Decimals with no exact binary form, where the order of a float sum shows in the last digit.
SCORES = st.floats(0, 100) | st.sampled_from([0.005, 0.125, 12.345, 33.335, 50.005, 66.665])
# From a millionth: near 1e-308 a weight times a score underflows and loses its digits.
WEIGHTS = st.floats(1e-6, 100) | st.sampled_from([0.01, 0.1, 0.3, 1 / 3, 2 / 3, 0.7, 3.3, 99.9])
THRESHOLDS = st.floats(0, 100, allow_nan=False)
# Scores are rounded to hundredths: 21.335 may become 21.33 or 21.34 (plus float noise).
ONE_HUNDREDTH = 0.01 + 1e-9


@st.composite
def audits(draw: st.DrawFn) -> tuple[list[Criterion], list[Finding]]:
    """Criteria with their weights, and one finding for each, in the criteria's order."""
    weights = draw(st.lists(WEIGHTS, min_size=1, max_size=50))
    criteria = [Criterion(id=f"c{i}", description="d", weight=w) for i, w in enumerate(weights)]
    findings = [
        Finding(
            criterion_id=c.id,
            verdict=draw(st.sampled_from(VERDICTS)),
            score=draw(SCORES),
            rationale="r",
            evidence=[],
        )
        for c in criteria
    ]
    return criteria, findings


def reweighted(criteria: list[Criterion], factor: float) -> list[Criterion]:
    return [c.model_copy(update={"weight": c.weight * factor}) for c in criteria]


@given(audit=audits(), threshold=THRESHOLDS)
def test_the_score_is_in_range_or_null_exactly_when_nothing_applies(
    audit: tuple[list[Criterion], list[Finding]], threshold: float
) -> None:
    criteria, findings = audit

    result = build_result(
        findings=findings, criteria=criteria, summary="s", pass_threshold=threshold
    )

    nothing_applies = all(f.verdict == "not_applicable" for f in findings)
    assert (result.score is None) == nothing_applies
    assert result.score is None or 0 <= result.score <= 100


@given(audit=audits(), threshold=THRESHOLDS)
def test_the_verdict_passes_only_without_a_failed_criterion_and_at_the_threshold(
    audit: tuple[list[Criterion], list[Finding]], threshold: float
) -> None:
    criteria, findings = audit

    result = build_result(
        findings=findings, criteria=criteria, summary="s", pass_threshold=threshold
    )

    if any(f.verdict == "fail" for f in findings):
        assert result.verdict == "fail"
    else:
        expected = result.score is None or result.score >= threshold
        assert result.verdict == ("pass" if expected else "fail")


@given(audit=audits(), exponent=st.integers(-8, 8))
def test_scaling_every_weight_by_a_power_of_two_changes_nothing(
    audit: tuple[list[Criterion], list[Finding]], exponent: int
) -> None:
    criteria, findings = audit
    factor = 2.0**exponent
    assume(all(0 < c.weight * factor <= 100 for c in criteria))

    scaled = weighted_score(findings, reweighted(criteria, factor))

    assert scaled == weighted_score(findings, criteria)


@given(audit=audits(), factor=st.floats(0.01, 100))
def test_scaling_every_weight_changes_the_score_by_rounding_at_most(
    audit: tuple[list[Criterion], list[Finding]], factor: float
) -> None:
    criteria, findings = audit
    assume(all(0 < c.weight * factor <= 100 for c in criteria))

    scaled = weighted_score(findings, reweighted(criteria, factor))
    original = weighted_score(findings, criteria)

    if original is None or scaled is None:
        assert scaled is original
    else:
        assert math.isclose(scaled, original, abs_tol=ONE_HUNDREDTH)


@given(audit=audits(), data=st.data())
def test_the_order_of_criteria_and_findings_changes_nothing(
    audit: tuple[list[Criterion], list[Finding]], data: st.DataObject
) -> None:
    criteria, findings = audit
    shuffled_criteria = data.draw(st.permutations(criteria))
    shuffled_findings = data.draw(st.permutations(findings))

    original = build_result(findings=findings, criteria=criteria, summary="s", pass_threshold=70)
    shuffled = build_result(
        findings=shuffled_findings, criteria=shuffled_criteria, summary="s", pass_threshold=70
    )

    assert (shuffled.score, shuffled.verdict) == (original.score, original.verdict)


def test_findings_in_another_order_score_the_same() -> None:
    # Found by the property above: a plain float sum gave 22.22 one way, 22.23 the other.
    criteria = [Criterion(id=f"c{i}", description="d", weight=1 / 3) for i in range(3)]
    findings = [
        Finding(criterion_id=f"c{i}", verdict="pass", score=score, rationale="r", evidence=[])
        for i, score in enumerate([0.005, 66.665, 0.005])
    ]

    scores = {weighted_score(order, criteria) for order in itertools.permutations(findings)}

    assert len(scores) == 1
