"""The rules that combine an audit's samples, as properties of any samples there can be.

Each finding keeps the verdict most samples gave, a tie going to the more severe; its score
is the median of that verdict's scores, so it stays in the verdict's band; its evidence is
every quote once; its agreement is the share that gave the verdict.
"""

import statistics
from collections import Counter

from hypothesis import example, given
from hypothesis import strategies as st

from shared.audits.consensus import SEVERITY, Sample, combine, combine_finding, majority_verdict
from shared.audits.schemas import Finding, Verdict
from shared.llm.schemas import SCORE_BANDS, VERDICTS

VERDICT = st.sampled_from(VERDICTS)
QUOTES = st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), max_size=4)


@st.composite
def judgements(draw: st.DrawFn, criterion_id: str = "c") -> Finding:
    """One sample's finding on a criterion, its score in its verdict's band (as validated)."""
    verdict = draw(VERDICT)
    band = SCORE_BANDS[verdict]
    score = draw(
        st.floats(band.low, band.high, exclude_min=band.open, exclude_max=band.open)
        | st.sampled_from([band.low, band.high]).filter(band.holds)
    )
    return Finding(
        criterion_id=criterion_id,
        verdict=verdict,
        score=score,
        rationale=draw(st.text(max_size=5)),
        evidence=draw(QUOTES),
    )


SAMPLED = st.lists(judgements(), min_size=1, max_size=5)


@given(st.lists(VERDICT, min_size=1, max_size=5))
@example(["pass", "fail"])
@example(["pass", "pass", "fail", "fail", "partial"])
@example(["not_applicable", "partial"])
def test_the_majority_is_given_most_and_a_tie_goes_to_the_more_severe(
    verdicts: list[Verdict],
) -> None:
    counts = Counter(verdicts)
    chosen = majority_verdict(verdicts)

    assert counts[chosen] == max(counts.values())
    tied = [v for v in counts if counts[v] == counts[chosen]]
    assert SEVERITY[chosen] == max(SEVERITY[v] for v in tied)


@given(
    st.lists(VERDICT, min_size=1, max_size=5).flatmap(
        lambda v: st.tuples(st.just(v), st.permutations(v))
    )
)
def test_the_order_of_the_samples_does_not_change_the_verdict(
    verdicts_and_shuffled: tuple[list[Verdict], list[Verdict]],
) -> None:
    verdicts, shuffled = verdicts_and_shuffled

    assert majority_verdict(shuffled) == majority_verdict(verdicts)


@given(SAMPLED)
def test_the_score_is_the_median_of_the_verdicts_scores_and_stays_in_its_band(
    sampled: list[Finding],
) -> None:
    finding = combine_finding(sampled)

    agreeing = [j.score for j in sampled if j.verdict == finding.verdict]
    assert finding.score == statistics.median(agreeing)
    assert SCORE_BANDS[finding.verdict].holds(finding.score)


@given(SAMPLED)
def test_agreement_is_the_share_that_gave_the_verdict(sampled: list[Finding]) -> None:
    finding = combine_finding(sampled)

    share = sum(j.verdict == finding.verdict for j in sampled) / len(sampled)
    assert finding.agreement == round(share, 4)
    # Four verdicts: the most given is given by a quarter of the samples at least.
    assert share >= 1 / min(len(sampled), len(VERDICTS))


@given(SAMPLED)
def test_the_evidence_is_every_quote_once_in_the_order_first_given(
    sampled: list[Finding],
) -> None:
    evidence = combine_finding(sampled).evidence

    given_ = [quote for j in sampled for quote in j.evidence]
    assert len(evidence) == len(set(evidence))
    assert set(evidence) == set(given_)
    assert evidence == sorted(evidence, key=given_.index)


@given(SAMPLED)
def test_the_rationale_is_the_first_agreeing_samples(sampled: list[Finding]) -> None:
    finding = combine_finding(sampled)

    assert finding.rationale == next(j for j in sampled if j.verdict == finding.verdict).rationale


@given(judgements(), st.integers(1, 5))
def test_samples_that_all_agree_give_their_own_finding_with_agreement_1(
    judgement: Finding, count: int
) -> None:
    finding = combine_finding([judgement] * count)

    evidence = list(dict.fromkeys(judgement.evidence))  # a quote repeated is kept once
    assert finding == judgement.model_copy(update={"agreement": 1.0, "evidence": evidence})


@st.composite
def samples(draw: st.DrawFn) -> list[Sample]:
    """1-5 samples judging the same 1-4 criteria."""
    ids = [f"c{i}" for i in range(draw(st.integers(1, 4)))]
    count = draw(st.integers(1, 5))
    return [
        Sample(findings=[draw(judgements(i)) for i in ids], summary=f"summary {n}")
        for n in range(count)
    ]


@given(samples())
def test_the_result_agreement_is_the_mean_and_the_summary_agrees_most(
    sampled: list[Sample],
) -> None:
    consensus = combine(sampled)

    shares = [
        combine_finding([s.findings[i] for s in sampled]).agreement or 0.0
        for i in range(len(consensus.findings))
    ]
    assert abs(consensus.agreement - statistics.fmean(shares)) <= 1e-4
    assert [f.criterion_id for f in consensus.findings] == [
        f.criterion_id for f in sampled[0].findings
    ]

    def matches(sample: Sample) -> int:
        kept = consensus.findings
        return sum(a.verdict == b.verdict for a, b in zip(sample.findings, kept, strict=True))

    best = max(matches(s) for s in sampled)
    assert consensus.summary == next(s.summary for s in sampled if matches(s) == best)
