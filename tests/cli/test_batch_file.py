"""audits.jsonl as the CLI reads it: checked lines, batches within the API's limits, stable keys."""

import json
from pathlib import Path
from typing import Any

import pytest

from cli.api_client import ApiProblem, Issue
from cli.batch_file import AUDIT_FIELDS, MAX_BATCH_BYTES, BadAuditFile, Line, read_lines, split
from shared.audits.schemas import AuditFields
from tests.factories import audit_request


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def lines_of(*requests: dict[str, Any]) -> list[Line]:
    return [Line(number=n, request=r) for n, r in enumerate(requests, start=1)]


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path: Path) -> None:
    path = write(tmp_path / "a.jsonl", f"\n{json.dumps(audit_request())}\n  \n{{}}\n")

    with pytest.raises(BadAuditFile) as raised:
        read_lines(path, rubric=None)

    assert raised.value.details == [
        "line 4: has neither `criteria` nor `rubric` (add one, or pass --rubric)"
    ]


def test_a_misspelled_field_is_named_as_the_api_would(tmp_path: Path) -> None:
    request = {**audit_request(criteria=None), "rubrc": "green-claims", "colour": "red"}
    path = write(tmp_path / "a.jsonl", json.dumps(request) + "\n")

    with pytest.raises(BadAuditFile) as raised:
        read_lines(path, rubric=None)

    assert raised.value.details == [
        "line 1: unknown field `rubrc` (did you mean `rubric`?), `colour`;"
        " each line needs `criteria` or `rubric`"
    ]


def test_rubric_fills_only_the_lines_without_criteria_or_rubric(tmp_path: Path) -> None:
    inline, named = audit_request(), audit_request(criteria=None, rubric="other")
    bare: dict[str, Any] = {}
    path = write(tmp_path / "a.jsonl", "\n".join(json.dumps(r) for r in (inline, named, bare)))

    lines = read_lines(path, rubric="green-claims")

    assert [line.request.get("rubric") for line in lines] == [None, "other", "green-claims"]


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("NaN", "not valid JSON: NaN is not a JSON number"),
        ('{"subject": 1,}', "not valid JSON: Expecting property name enclosed in double quotes"),
        ('"a string"', "expected a JSON object (one audit request), got a string"),
    ],
)
def test_a_malformed_line_says_why(tmp_path: Path, text: str, why: str) -> None:
    path = write(tmp_path / "a.jsonl", text + "\n")

    with pytest.raises(BadAuditFile) as raised:
        read_lines(path, rubric="r")

    assert raised.value.details[0].startswith(f"line 1: {why}")


def test_a_file_with_no_request_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BadAuditFile, match="no audit requests"):
        read_lines(write(tmp_path / "a.jsonl", "\n\n"), rubric=None)


def test_batches_hold_at_most_1000_lines() -> None:
    chunks = split(lines_of(*[audit_request()] * 2500), name=None)

    assert [len(chunk.lines) for chunk in chunks] == [1000, 1000, 500]
    assert [chunk.first_line for chunk in chunks] == [1, 1001, 2001]


def test_long_contents_cut_batches_short_of_the_body_limit() -> None:
    big = audit_request(content="x" * (3 * 1024 * 1024))

    chunks = split(lines_of(big, big, big, audit_request()), name=None)

    assert [len(chunk.lines) for chunk in chunks] == [2, 2]
    assert all(len(json.dumps(chunk.body())) < MAX_BATCH_BYTES for chunk in chunks)


def test_the_key_depends_on_the_requests_not_on_how_the_file_spells_them() -> None:
    request = audit_request()
    respelled = json.loads(json.dumps(dict(reversed(request.items()))))
    [chunk] = split(lines_of(request), name="n")
    [same] = split([Line(number=7, request=respelled)], name="n")
    [renamed] = split(lines_of(request), name="other")
    second_of_two = split(lines_of(*[request] * 1001), name="n")[1]

    assert chunk.idempotency_key() == same.idempotency_key()
    assert renamed.idempotency_key() != chunk.idempotency_key()
    # Two identical runs of lines in one file are two batches, not one.
    assert second_of_two.idempotency_key() != chunk.idempotency_key()
    assert len(chunk.idempotency_key()) <= 255


def test_problems_about_items_name_the_line_of_the_file() -> None:
    [chunk] = split([Line(number=3, request={}), Line(number=9, request={})], name=None)
    problem = ApiProblem(
        status=422,
        code="validation_error",
        detail="body.audits.1.content: too short",
        errors=[
            Issue(loc=("body", "audits", 1, "content"), msg="too short"),
            Issue(loc=("body", "name"), msg="too long"),
        ],
    )

    assert chunk.issues_in_file(problem) == [
        "line 9: content: too short",
        "body.name: too long",
    ]


def test_the_fields_it_knows_are_those_of_a_batch_item() -> None:
    assert set(AUDIT_FIELDS) == set(AuditFields.model_fields)
