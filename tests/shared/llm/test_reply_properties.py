"""Properties of the reply validator, for anything a model (or a stand-in server) may send.

Whatever the reply, `validate_reply` either returns one finding per criterion, in the
criteria's order, with every kept quote a literal span of the content, or raises
`InvalidModelOutput`; any other exception would escape the worker's error handling.
"""

import json
import math
from collections.abc import Callable
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from shared.llm.errors import InvalidModelOutput
from shared.llm.schemas import VERDICTS, CriterionText, ReplyFinding, validate_reply

WHITESPACE = " \t\n\r\x0b\x0c\x1c\u00a0\u2003\u3000"
WORDS = st.text(st.characters(exclude_categories=["Z", "Cc"]), min_size=1, max_size=6)
SPACES = st.text(st.sampled_from(WHITESPACE), min_size=1, max_size=3)
IDS = st.lists(st.from_regex(r"\A[a-z0-9][a-z0-9_-]{0,10}\Z"), min_size=1, max_size=6, unique=True)
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=20,
)


def collapsed(text: str) -> str:
    return " ".join(text.split())


@st.composite
def contents(draw: st.DrawFn) -> str:
    """Words between runs of any whitespace, as pages and contracts are, or any text."""
    words = draw(st.lists(WORDS, min_size=1, max_size=12))
    text = "".join(draw(SPACES) + word for word in words).lstrip()
    return draw(st.just(text) | st.text(min_size=1, max_size=100))


@st.composite
def quotes(draw: st.DrawFn, content: str) -> str:
    """Evidence a model might give: a span of the content, re-flowed or padded, or not."""
    start = draw(st.integers(0, len(content)))
    span = content[start : draw(st.integers(start, len(content)))]
    reflowed = draw(st.sampled_from(WHITESPACE)).join(span.split())
    padded = draw(st.sampled_from(["", " ", "\n"])) + span + draw(st.sampled_from(["", " "]))
    return draw(st.sampled_from([span, reflowed, padded]) | st.text(max_size=10))


@st.composite
def findings(draw: st.DrawFn, criterion_id: str, content: str) -> dict[str, Any]:
    """A finding as the reply schema describes it."""
    return {
        "criterion_id": criterion_id,
        "verdict": draw(st.sampled_from(VERDICTS)),
        "score": draw(st.floats(0, 100) | st.integers(0, 100)),
        "rationale": draw(st.text(max_size=20)),
        "evidence": draw(st.lists(quotes(content), max_size=4)),
    }


@st.composite
def corrupted(draw: st.DrawFn, document: dict[str, Any]) -> Any:
    """The reply with one thing wrong: a finding missing, repeated, unknown or malformed."""
    items = list(document["findings"])
    at = draw(st.integers(0, len(items) - 1))
    kind = draw(st.sampled_from(["drop", "repeat", "unknown", "field", "extra", "summary", "any"]))
    if kind == "drop":
        del items[at]
    elif kind == "repeat":
        items.append(items[at])
    elif kind == "unknown":
        items.append({**items[at], "criterion_id": draw(st.text(max_size=5) | JSON)})
    elif kind == "field":
        field = draw(st.sampled_from(sorted(items[at])))
        wrong = draw(st.floats() | st.integers(-5, 105) | st.text(max_size=5) | JSON)
        items[at] = {**items[at], field: wrong}
        if draw(st.booleans()):
            del items[at][field]
    elif kind == "extra":
        items[at] = {**items[at], draw(st.text(max_size=5)): draw(JSON)}
    elif kind == "summary":
        return {**document, "summary": draw(JSON)}
    else:
        return draw(JSON)
    return {**document, "findings": items}


@st.composite
def replies(draw: st.DrawFn, ids: list[str], content: str) -> str:
    """A valid reply, findings in any order, then now and then made wrong in a few ways."""
    document: Any = {
        "findings": [draw(findings(i, content)) for i in draw(st.permutations(ids))],
        "summary": draw(st.text(max_size=20)),
    }
    for _ in range(draw(st.integers(0, 2))):
        if isinstance(document, dict) and document.get("findings"):
            document = draw(corrupted(document))
    return json.dumps(document)


def outcome_of(call: Callable[[], tuple[list[ReplyFinding], str, int]]) -> Any:
    """The validator's answer, or None when it raised `InvalidModelOutput`."""
    try:
        return call()
    except InvalidModelOutput:
        return None


def assert_valid_findings(
    validated: tuple[list[ReplyFinding], str, int], raw: str, ids: list[str], content: str
) -> None:
    found, summary, dropped = validated
    assert [f.criterion_id for f in found] == ids
    assert isinstance(summary, str)
    assert all(f.verdict in VERDICTS and math.isfinite(f.score) for f in found)
    assert all(0 <= f.score <= 100 for f in found)
    given_quotes = {f["criterion_id"]: f["evidence"] for f in json.loads(raw)["findings"]}
    for finding in found:
        asked = given_quotes[finding.criterion_id]
        present = [q for q in asked if collapsed(q) and collapsed(q) in collapsed(content)]
        assert [collapsed(q) for q in finding.evidence] == [collapsed(q) for q in present]
        assert all(quote in content for quote in finding.evidence)
    assert dropped == sum(len(given_quotes[i]) for i in ids) - sum(len(f.evidence) for f in found)


@given(ids=IDS, content=contents(), data=st.data())
@settings(max_examples=300)  # about half the replies are valid; their quotes are what count
def test_a_reply_is_refused_or_gives_one_finding_per_criterion_quoting_the_content(
    ids: list[str], content: str, data: st.DataObject
) -> None:
    criteria = [CriterionText(id=i, description="d") for i in ids]
    raw = data.draw(replies(ids, content))

    validated = outcome_of(lambda: validate_reply(raw, criteria=criteria, content=content))

    if validated is not None:
        assert_valid_findings(validated, raw, ids, content)


@given(raw=st.text(max_size=300) | JSON.map(json.dumps))
@example(raw="[" * 100_000)
@example(raw='{"findings": ' + "[" * 5_000 + "]" * 5_000 + ', "summary": ""}')
@example(raw="1" * 5_000)
@example(raw='{"findings": [], "summary": NaN}')
@example(raw="\ud800")
def test_any_text_is_refused_or_validated(raw: str) -> None:
    criteria = [CriterionText(id="a", description="d")]

    validated = outcome_of(lambda: validate_reply(raw, criteria=criteria, content="a b"))

    if validated is not None:
        assert_valid_findings(validated, raw, ["a"], "a b")
