import json
import time
from typing import Any

import pytest

from shared.llm.errors import InvalidModelOutput
from shared.llm.prompt import SYSTEM_PROMPT
from shared.llm.schemas import REPLY_LIMITS, SCORE_BANDS, CriterionText, validate_reply

CRITERIA = [
    CriterionText(id="claims", description="Claims are substantiated."),
    CriterionText(id="shipping", description="Shipping terms are clear."),
    CriterionText(id="tone", description="The tone is neutral."),
]
CONTENT = "Our shoes are made from\n   100% recycled   plastic.\tShipping is free in the EU."


def finding(criterion_id: str, **overrides: Any) -> dict[str, Any]:
    return {
        "criterion_id": criterion_id,
        "verdict": "pass",
        "score": 80,
        "rationale": "Looks fine.",
        "evidence": [],
        **overrides,
    }


def reply(*findings: dict[str, Any], summary: str = "All good.") -> str:
    return json.dumps({"findings": list(findings), "summary": summary})


def all_findings() -> list[dict[str, Any]]:
    return [finding(c.id) for c in CRITERIA]


def invalid(raw: str) -> str:
    with pytest.raises(InvalidModelOutput) as caught:
        validate_reply(raw, criteria=CRITERIA, content=CONTENT)
    assert caught.value.code == "invalid_model_output"
    assert caught.value.transient is False
    return caught.value.message


def test_a_valid_reply_becomes_findings_and_summary() -> None:
    raw = reply(
        finding("claims", verdict="partial", score=55.5, evidence=["100% recycled"]),
        finding("shipping", verdict="fail", score=0),
        finding("tone", verdict="not_applicable", score=0),
        summary="Mostly fine.",
    )

    findings, summary, dropped = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert summary == "Mostly fine."
    assert dropped == 0
    assert [(f.criterion_id, f.verdict, f.score) for f in findings] == [
        ("claims", "partial", 55.5),
        ("shipping", "fail", 0),
        ("tone", "not_applicable", 0),
    ]
    assert findings[0].evidence == ["100% recycled"]


def test_shuffled_findings_come_back_in_the_criteria_order() -> None:
    raw = reply(finding("tone"), finding("claims"), finding("shipping"))

    findings, _, _ = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert [f.criterion_id for f in findings] == ["claims", "shipping", "tone"]


def test_unknown_keys_are_ignored() -> None:
    raw = json.dumps(
        {"findings": [{**f, "confidence": 0.9} for f in all_findings()], "summary": "s", "x": 1}
    )

    findings, _, _ = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert len(findings) == 3


@pytest.mark.parametrize("raw", ["", "Here you go: {", '{"findings": [], "summary": "s"', "null x"])
def test_text_that_is_not_json_is_invalid(raw: str) -> None:
    assert "not JSON" in invalid(raw)


def test_nan_is_not_a_json_number() -> None:
    raw = reply(finding("claims"), finding("shipping"), finding("tone")).replace(
        '"score": 80', '"score": NaN', 1
    )

    assert "not JSON" in invalid(raw)


@pytest.mark.parametrize(
    ("raw", "where"),
    [
        (json.dumps([]), "reply"),
        (json.dumps({"findings": []}), "summary"),
        (json.dumps({"findings": "none", "summary": "s"}), "findings"),
        (
            reply(finding("claims", score="80"), finding("shipping"), finding("tone")),
            "findings.0.score",
        ),
        (
            reply(finding("claims", verdict="ok"), finding("shipping"), finding("tone")),
            "findings.0.verdict",
        ),
        (
            reply(finding("claims", evidence="quote"), finding("shipping"), finding("tone")),
            "findings.0.evidence",
        ),
        (
            reply(finding("claims"), {"criterion_id": "shipping"}, finding("tone")),
            "findings.1.verdict",
        ),
    ],
)
def test_a_reply_of_the_wrong_shape_is_invalid(raw: str, where: str) -> None:
    message = invalid(raw)

    assert "wrong shape" in message
    assert where in message


@pytest.mark.parametrize("score", [-0.5, 100.01, 1000])
def test_a_score_out_of_range_is_invalid(score: float) -> None:
    message = invalid(reply(finding("claims"), finding("shipping", score=score), finding("tone")))

    assert "findings.1.score" in message


def test_scores_at_the_bounds_are_valid() -> None:
    raw = reply(
        finding("claims", verdict="fail", score=0),
        finding("shipping", score=100),
        finding("tone", score=100.0),
    )

    findings, _, _ = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert [f.score for f in findings] == [0, 100, 100]


def test_the_offending_value_is_not_echoed() -> None:
    secret = "a sentence of the confidential content"

    message = invalid(
        reply(finding("claims", verdict=secret), finding("shipping"), finding("tone"))
    )

    assert secret not in message


def test_a_missing_criterion_is_invalid() -> None:
    message = invalid(reply(finding("claims"), finding("tone")))

    assert message.endswith("missing criterion ids: 'shipping'")


def test_a_repeated_criterion_is_invalid() -> None:
    message = invalid(
        reply(finding("claims"), finding("shipping"), finding("tone"), finding("claims"))
    )

    assert message.endswith("repeated criterion ids: 'claims'")


def test_an_unknown_criterion_is_invalid() -> None:
    message = invalid(
        reply(finding("claims"), finding("shipping"), finding("tone"), finding("price"))
    )

    assert message.endswith("unknown criterion ids: 'price'")


def test_every_id_problem_is_reported_at_once() -> None:
    message = invalid(reply(finding("claims"), finding("claims"), finding("price")))

    assert "unknown criterion ids: 'price'" in message
    assert "repeated criterion ids: 'claims'" in message
    assert "missing criterion ids: 'shipping', 'tone'" in message


def test_quotes_not_in_the_content_are_dropped_and_counted() -> None:
    raw = reply(
        finding("claims", evidence=["100% recycled", "made from bamboo", "", "OUR SHOES"]),
        finding("shipping", evidence=["Shipping is free", "ships worldwide"]),
        finding("tone"),
    )

    findings, _, dropped = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert findings[0].evidence == ["100% recycled"]
    assert findings[1].evidence == ["Shipping is free"]
    assert dropped == 4


def test_a_quote_with_different_whitespace_is_kept_as_the_content_has_it() -> None:
    raw = reply(
        finding("claims", evidence=["  made from 100% recycled plastic. Shipping "]),
        *all_findings()[1:],
    )

    findings, _, dropped = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert dropped == 0
    assert findings[0].evidence == ["made from\n   100% recycled   plastic.\tShipping"]
    assert findings[0].evidence[0] in CONTENT


# Bounds of a reply (REPLY_LIMITS)

LIMITS = REPLY_LIMITS
PROBE_CONTENT = ("a " * 50000)[:100000]


def largest_reply(criteria: int, quotes: list[str]) -> tuple[list[CriterionText], str]:
    """Rationales and summary at their limits, each finding quoting `quotes`."""
    ids = [f"c{i}" for i in range(criteria)]
    findings = [finding(i, rationale="r" * LIMITS.rationale_chars, evidence=quotes) for i in ids]
    raw = reply(*findings, summary="s" * LIMITS.summary_chars)
    return [CriterionText(id=i, description="d") for i in ids], raw


def test_the_limits_are_the_documented_ones() -> None:
    assert (LIMITS.quote_chars, LIMITS.rationale_chars, LIMITS.summary_chars) == (1000, 2000, 4000)
    assert [LIMITS.quotes_per_finding(n) for n in (1, 20, 21, 34, 50, 200)] == [5, 5, 4, 2, 2, 1]


@pytest.mark.parametrize(
    ("overrides", "problem"),
    [
        ({"evidence": ["x" * 1001]}, "findings.0.evidence.0: String should have at most 1000"),
        ({"evidence": ["Shipping"] * 6}, "findings.0.evidence: List should have at most 5 items"),
        ({"rationale": "r" * 2001}, "findings.0.rationale: String should have at most 2000"),
    ],
)
def test_a_finding_beyond_a_bound_is_invalid(overrides: dict[str, Any], problem: str) -> None:
    raw = reply(finding("claims", **overrides), *all_findings()[1:])

    assert problem in invalid(raw)


def test_a_summary_beyond_its_bound_is_invalid() -> None:
    raw = reply(*all_findings(), summary="s" * 2001 * 2)

    assert "summary: String should have at most 4000 characters" in invalid(raw)


def test_quotes_per_finding_shrink_as_criteria_grow() -> None:
    criteria, raw = largest_reply(50, ["a b"] * 3)

    with pytest.raises(InvalidModelOutput) as caught:
        validate_reply(raw, criteria=criteria, content="a b")

    assert "more than 2 evidence quotes (the limit for this many criteria) for: 'c0'" in (
        caught.value.message
    )


def test_a_reply_longer_than_any_valid_one_is_refused_before_parsing() -> None:
    limit = LIMITS.reply_chars(len(CRITERIA))
    raw = reply(*all_findings(), summary=" " * limit)

    assert f"the reply is longer than {limit:,} characters" in invalid(raw)


def test_a_reply_at_every_bound_is_valid() -> None:
    quotes = [f"{n} " + "q" * (LIMITS.quote_chars - 2) for n in range(5)]
    criteria, raw = largest_reply(20, quotes)

    findings, summary, dropped = validate_reply(raw, criteria=criteria, content=" ".join(quotes))

    assert [f.criterion_id for f in findings] == [c.id for c in criteria]
    assert all(f.evidence == quotes for f in findings)
    assert all(len(f.rationale) == LIMITS.rationale_chars for f in findings)
    assert len(summary) == LIMITS.summary_chars
    assert dropped == 0


@pytest.mark.parametrize("criteria", [1, 10, 50])
def test_the_largest_reply_against_the_probe_content_is_validated_quickly(criteria: int) -> None:
    # Every quote at its length limit, missing by its last character: each search reads the
    # whole content. The figure is in bench/RESULTS.md (section 8); this bound is generous.
    count = LIMITS.quotes_per_finding(criteria)
    quotes = [("a " * LIMITS.quote_chars)[: LIMITS.quote_chars - 2] + f"b{n}" for n in range(count)]
    asked, raw = largest_reply(criteria, quotes)
    begun = time.process_time()

    findings, _, dropped = validate_reply(raw, criteria=asked, content=PROBE_CONTENT)

    assert time.process_time() - begun < 1.0
    assert dropped == criteria * count
    assert len(findings) == criteria


def test_the_probes_hostile_reply_is_refused_quickly() -> None:
    # Issue 8: six quotes of 20,000 words of "a" then "b" per finding. Searching them took
    # about 8 s each; refused on the reply's length, they are not even parsed.
    quote = " ".join(["a"] * 20000 + ["b"])
    raw = reply(*(finding(c.id, evidence=[quote] * 6) for c in CRITERIA))
    begun = time.process_time()

    message = invalid_for(raw, PROBE_CONTENT)

    assert time.process_time() - begun < 1.0
    assert "the reply is longer than" in message


def invalid_for(raw: str, content: str) -> str:
    with pytest.raises(InvalidModelOutput) as caught:
        validate_reply(raw, criteria=CRITERIA, content=content)
    return caught.value.message


# Replies that contradict themselves


@pytest.mark.parametrize(
    ("verdict", "score"),
    [("fail", 100), ("fail", 50.5), ("pass", 0), ("pass", 49.9), ("partial", 0), ("partial", 100)],
)
def test_a_verdict_that_contradicts_its_score_is_invalid(verdict: str, score: float) -> None:
    raw = reply(
        finding("claims"), finding("shipping", verdict=verdict, score=score), finding("tone")
    )

    with pytest.raises(InvalidModelOutput) as caught:
        validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert caught.value.kind == "contradiction"
    assert f"'shipping' is {verdict} with score {score:g}" in caught.value.reason
    assert str(SCORE_BANDS[verdict]) in caught.value.reason


@pytest.mark.parametrize(
    ("verdict", "score"),
    [
        ("fail", 0),
        ("fail", 50),
        ("pass", 50),
        ("pass", 100),
        ("partial", 0.5),
        ("partial", 99.5),
        ("not_applicable", 0),
        ("not_applicable", 100),
    ],
)
def test_scores_within_their_verdicts_band_are_valid(verdict: str, score: float) -> None:
    raw = reply(
        finding("claims"), finding("shipping", verdict=verdict, score=score), finding("tone")
    )

    findings, _, _ = validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert (findings[1].verdict, findings[1].score) == (verdict, score)


def test_the_system_prompt_states_the_bands() -> None:
    for verdict in ("pass", "partial", "fail"):
        assert f'a "{verdict}" scores {SCORE_BANDS[verdict]}' in SYSTEM_PROMPT


def first_finding_with(**overrides: Any) -> str:
    return reply(finding("claims", **overrides), finding("shipping"), finding("tone"))


@pytest.mark.parametrize(
    ("raw", "kind"),
    [
        ("not json", "not_json"),
        ('{"findings": "none", "summary": "x"}', "shape"),
        (reply(finding("claims"), finding("shipping")), "criterion_ids"),
        (first_finding_with(rationale="r" * 2_001), "bounds"),
        (first_finding_with(evidence=["q"] * 6), "bounds"),
        (first_finding_with(evidence=["q" * 1_001]), "bounds"),
        (first_finding_with(verdict="fail", score=100), "contradiction"),
    ],
)
def test_invalid_output_says_what_kind_it_is(raw: str, kind: str) -> None:
    with pytest.raises(InvalidModelOutput) as caught:
        validate_reply(raw, criteria=CRITERIA, content=CONTENT)

    assert (caught.value.kind, caught.value.rejected) == (kind, (kind,))
