"""Bad input: a 4xx problem detail that says what to fix, and nothing written anywhere."""

import base64
import json
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from arq.connections import ArqRedis
from fastapi import FastAPI
from httpx import AsyncClient, Response
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.audits.repository import AuditFilters
from shared.audits.service import page_cursors
from shared.config import Settings
from shared.db import SessionFactory
from tests.api.checks import assert_problem, queued_jobs, row_counts
from tests.api.conftest import ClientFactory, NothingWritten
from tests.api.support import submit
from tests.environment import environment
from tests.factories import audit_request, criterion
from tests.rows import load_audit

MAX_CONTENT_CHARS = 100_000
MAX_METADATA_BYTES = 16 * 1024


def criteria(count: int) -> list[dict[str, Any]]:
    return [criterion(f"c{n}") for n in range(count)]


def nested(levels: int) -> dict[str, Any]:
    """A JSON object `levels` containers deep."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(levels - 1):
        value = {"k": value}
    return value


def metadata_of_size(size: int) -> dict[str, str]:
    """`{"x": "aaa…"}` whose compact JSON is exactly `size` bytes."""
    return {"x": "a" * (size - len('{"x":""}'))}


def case(name: str, given: Any, loc: str, fragment: str) -> Any:
    """One bad input: `loc` is where the problem is (dotted), `fragment` what its message says."""
    return pytest.param(given, loc, fragment, id=name)


def assert_invalid(response: Response, loc: str, fragment: str) -> dict[str, Any]:
    """A 422 `validation_error` pointing at `loc`, whose message and detail name the fix."""
    body = assert_problem(response, 422, "validation_error")
    issues = body["errors"]
    assert issues, body
    assert all(set(issue) == {"loc", "msg", "type"} for issue in issues)
    matching = [i for i in issues if ".".join(str(part) for part in i["loc"]) == loc]
    assert matching, f"no error at {loc}: {issues}"
    assert fragment in matching[0]["msg"], matching[0]
    if len(issues) == 1:
        assert body["detail"].startswith(f"{loc}: ")
        assert fragment in body["detail"]
    return body


ONE = [criterion()]
BAD_CRITERION_IDS = ["Claims", "-lead", "_lead", "has space", "", "a" * 65, "café", "a.b", "a\x00"]

INVALID_BODIES = [
    case("no subject", audit_request(subject=None), "body.subject", "Field required"),
    case("no content", audit_request(content=None), "body.content", "Field required"),
    case("empty subject", audit_request(subject=""), "body.subject", "at least 1 character"),
    case("empty content", audit_request(content=""), "body.content", "at least 1 character"),
    case("long subject", audit_request(subject="s" * 201), "body.subject", "at most 200"),
    case("no criteria", audit_request(criteria=[]), "body.criteria", "at least 1 item"),
    case(
        "criterion without description",
        audit_request(criteria=[{"id": "a"}]),
        "body.criteria.0.description",
        "Field required",
    ),
    case(
        "criterion without id",
        audit_request(criteria=[{"description": "d"}]),
        "body.criteria.0.id",
        "Field required",
    ),
    case(
        "empty description",
        audit_request(criteria=[criterion(description="")]),
        "body.criteria.0.description",
        "at least 1 character",
    ),
    case(
        "long description",
        audit_request(criteria=[criterion(description="d" * 2001)]),
        "body.criteria.0.description",
        "at most 2000",
    ),
    # wrong types
    case("subject number", audit_request(subject=42), "body.subject", "valid string"),
    case("content list", audit_request(content=["a"]), "body.content", "valid string"),
    case("criteria string", audit_request(criteria="all"), "body.criteria", "valid list"),
    case("criterion string", audit_request(criteria=["a"]), "body.criteria.0", "valid dictionary"),
    case(
        "weight string",
        audit_request(criteria=[criterion(weight="heavy")]),
        "body.criteria.0.weight",
        "valid number",
    ),
    case("threshold string", audit_request(pass_threshold="high"), "body.pass_threshold", "number"),
    case("metadata string", audit_request(metadata="x"), "body.metadata", "valid dictionary"),
    case("metadata list", audit_request(metadata=[1, 2]), "body.metadata", "valid dictionary"),
    case(
        "metadata null",
        {**audit_request(), "metadata": None},
        "body.metadata",
        "valid dictionary",
    ),
    case("model number", audit_request(model=7), "body.model", "valid string"),
    # unknown fields
    case("unknown field", audit_request(urgency="high"), "body.urgency", "Extra inputs"),
    case(
        "unknown criterion field",
        audit_request(criteria=[criterion(severity=3)]),
        "body.criteria.0.severity",
        "Extra inputs",
    ),
    # criteria
    case(
        "duplicate ids",
        audit_request(criteria=[criterion("a"), criterion("b"), criterion("a")]),
        "body.criteria",
        "repeated: a",
    ),
    *[
        case(
            f"criterion id {bad_id[:8]!r}",
            audit_request(criteria=[criterion(bad_id)]),
            "body.criteria.0.id",
            "should match pattern",
        )
        for bad_id in BAD_CRITERION_IDS
    ],
    case("51 criteria", audit_request(criteria=criteria(51)), "body.criteria", "at most 50"),
    *[
        case(
            f"weight {weight}",
            audit_request(criteria=[criterion(weight=weight)]),
            "body.criteria.0.weight",
            fragment,
        )
        for weight, fragment in [
            (0, "greater than 0"),
            (-1, "greater than 0"),
            (100.5, "less than or equal to 100"),
        ]
    ],
    case(
        "threshold 101", audit_request(pass_threshold=101), "body.pass_threshold", "or equal to 100"
    ),
    case("threshold -1", audit_request(pass_threshold=-1), "body.pass_threshold", "or equal to 0"),
    # exactly one of criteria and rubric
    case("criteria and rubric", audit_request(rubric="esg"), "body", "exactly one of `criteria`"),
    case("neither", audit_request(criteria=None), "body", "exactly one of `criteria` or `rubric`"),
    case(
        "version without rubric",
        audit_request(rubric_version=2),
        "body",
        "`rubric_version` needs `rubric`",
    ),
    case(
        "rubric version 0",
        audit_request(criteria=None, rubric="esg", rubric_version=0),
        "body.rubric_version",
        "greater than or equal to 1",
    ),
    case(
        "rubric version beyond int4",
        audit_request(criteria=None, rubric="esg", rubric_version=2**40),
        "body.rubric_version",
        "less than or equal to 2147483647",
    ),
    case("long rubric", audit_request(criteria=None, rubric="r" * 65), "body.rubric", "at most 64"),
    # limits
    case(
        "content over limit",
        audit_request(content="x" * (MAX_CONTENT_CHARS + 1)),
        "body.content",
        "at most 100000 characters (MAX_CONTENT_CHARS), got 100001",
    ),
    case(
        "metadata over 16 KiB",
        audit_request(metadata=metadata_of_size(MAX_METADATA_BYTES + 1)),
        "body.metadata",
        "at most 16384 bytes as JSON, got 16385",
    ),
    case("metadata too deep", audit_request(metadata=nested(33)), "body.metadata", "32 levels"),
    case("model not allowed", audit_request(model="gpt-9"), "body.model", "ALLOWED_MODELS"),
    case("no samples", audit_request(samples=0), "body.samples", "greater than or equal to 1"),
    case("six samples", audit_request(samples=6), "body.samples", "less than or equal to 5"),
    # NUL: PostgreSQL cannot store it
    case("NUL in subject", audit_request(subject="a\x00b"), "body.subject", "NUL"),
    case("NUL in content", audit_request(content="a\x00b"), "body.content", "NUL"),
    case(
        "NUL in description",
        audit_request(criteria=[criterion(description="a\x00b")]),
        "body.criteria.0.description",
        "NUL",
    ),
    case("NUL in metadata value", audit_request(metadata={"k": "a\x00"}), "body.metadata", "NUL"),
    case("NUL in metadata key", audit_request(metadata={"a\x00": 1}), "body.metadata", "NUL"),
    case(
        "NUL deep in metadata",
        audit_request(metadata={"deep": [{"x": ["a\x00"]}]}),
        "body.metadata",
        "NUL",
    ),
    case("NUL in rubric", audit_request(criteria=None, rubric="a\x00b"), "body.rubric", "NUL"),
]


@pytest.mark.parametrize(("body", "loc", "fragment"), INVALID_BODIES)
async def test_invalid_audit_is_refused_and_nothing_is_written(
    client: AsyncClient,
    nothing_written: NothingWritten,
    body: dict[str, Any],
    loc: str,
    fragment: str,
) -> None:
    response = await client.post("/audits", json=body)

    assert_invalid(response, loc, fragment)
    await nothing_written()


def raw(body: dict[str, Any], old: str, new: str) -> bytes:
    """The JSON text of `body` with `old` replaced: what a non-Python client might send."""
    text = json.dumps(body)
    assert old in text
    return text.replace(old, new).encode()


# Bodies that are not (standard) JSON at all.
NOT_JSON = [
    case("form encoded", b"subject=s&content=c", "body.0", "JSON decode error"),
    case("truncated", b'{"subject": "s",', "body.16", "JSON decode error"),
    case("array", b"[]", "body", "valid dictionary"),
    case("string", b'"audit"', "body", "valid dictionary"),
    case("null", b"null", "body", "valid dictionary"),
    case("NaN", raw(audit_request(), '"TB-01"', "NaN"), "body.metadata", "must be finite"),
    case("Infinity", raw(audit_request(), '"TB-01"', "-Infinity"), "body.metadata", "finite"),
    case(
        "NaN weight",
        raw(audit_request(), '"weight": 2', '"weight": NaN'),
        "body.criteria.1.weight",
        "finite number",
    ),
    case(
        "Infinity threshold",
        raw(audit_request(pass_threshold=1), '"pass_threshold": 1', '"pass_threshold": Infinity'),
        "body.pass_threshold",
        "finite number",
    ),
]


@pytest.mark.parametrize(("content", "loc", "fragment"), NOT_JSON)
async def test_body_that_is_not_json_is_refused(
    client: AsyncClient, nothing_written: NothingWritten, content: bytes, loc: str, fragment: str
) -> None:
    response = await client.post(
        "/audits", content=content, headers={"Content-Type": "application/json"}
    )

    assert_invalid(response, loc, fragment)
    await nothing_written()


async def test_empty_body_is_refused(client: AsyncClient, nothing_written: NothingWritten) -> None:
    response = await client.post("/audits", headers={"Content-Type": "application/json"})

    assert_invalid(response, "body", "Field required")
    await nothing_written()


async def test_body_that_is_not_utf8_is_a_bad_request(
    client: AsyncClient, nothing_written: NothingWritten
) -> None:
    response = await client.post(
        "/audits", content=b'{"subject": "\xff\xfe"}', headers={"Content-Type": "application/json"}
    )

    body = assert_problem(response, 400, "bad_request")
    assert "body" in body["detail"]
    await nothing_written()


async def test_body_sent_as_text_is_refused(
    client: AsyncClient, nothing_written: NothingWritten
) -> None:
    response = await client.post(
        "/audits", content=json.dumps(audit_request()), headers={"Content-Type": "text/plain"}
    )

    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"
    await nothing_written()


# What is just inside the limits is accepted, so the tests above test the limits.
def edge(name: str, **overrides: Any) -> Any:
    return pytest.param(audit_request(**overrides), id=name)


VALID_EDGES = [
    edge("subject of 200", subject="s" * 200),
    edge("content at MAX_CONTENT_CHARS", content="x" * MAX_CONTENT_CHARS),
    edge("50 criteria", criteria=criteria(50)),
    edge("criterion id of 64", criteria=[criterion("a" * 64)]),
    edge("criterion id with digits, - and _", criteria=[criterion("0-a_b")]),
    edge("weight 100", criteria=[criterion(weight=100)]),
    edge("weight 0.01", criteria=[criterion(weight=0.01)]),
    edge("description of 2000", criteria=[criterion(description="d" * 2000)]),
    edge("metadata of 16 KiB", metadata=metadata_of_size(MAX_METADATA_BYTES)),
    edge("metadata 32 deep", metadata=nested(32)),
    edge("metadata with the text \\u0000", metadata={"path": "C:\\u0000"}),
    edge("metadata numbers", metadata={"big": 10**30, "pi": 3.14, "none": None}),
    edge("the default model by name", model="gpt-4o-mini"),
    edge("threshold 0", pass_threshold=0),
    edge("no metadata", metadata=None),
]


@pytest.mark.parametrize("body", VALID_EDGES)
async def test_input_at_the_limits_is_accepted(
    client: AsyncClient,
    session_factory: SessionFactory,
    redis: ArqRedis,
    settings: Settings,
    body: dict[str, Any],
) -> None:
    response = await client.post("/audits", json=body)

    assert response.status_code == 202, response.text
    audit = await load_audit(session_factory, response.json()["id"])
    assert audit.content == body["content"]
    assert audit.metadata_ == body.get("metadata", {})
    assert await queued_jobs(redis, settings) == {f"audit:{audit.id}"}


async def test_unknown_rubric_is_refused(
    client: AsyncClient, nothing_written: NothingWritten
) -> None:
    response = await client.post(
        "/audits", json=audit_request(criteria=None, rubric="greenwashing")
    )

    body = assert_problem(response, 422, "rubric_not_found")
    assert "greenwashing" in body["detail"]
    await nothing_written()


async def test_allowed_models_are_the_settings(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    with environment(ALLOWED_MODELS="llama-3.1-8b,qwen2.5-7b"):
        async with client_with(allowed_models=["llama-3.1-8b", "qwen2.5-7b"]) as client:
            accepted = await client.post("/audits", json=audit_request(model="qwen2.5-7b"))
            refused = await client.post("/audits", json=audit_request(model="gpt-4o-mini"))

    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["model"] == "qwen2.5-7b"
    body = assert_invalid(refused, "body.model", "llama-3.1-8b, qwen2.5-7b")
    assert "ALLOWED_MODELS" in body["detail"]
    assert (await row_counts(engine))["audit"] == 1


async def test_samples_are_bounded_by_max_samples(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    async with client_with(max_samples=2) as client:
        accepted = await client.post("/audits", json=audit_request(samples=2))
        refused = await client.post("/audits", json=audit_request(samples=3))
        in_a_batch = await client.post(
            "/batches", json={"audits": [audit_request(), audit_request(samples=3)]}
        )

    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["samples"] == 2
    assert_invalid(refused, "body.samples", "at most 2 (MAX_SAMPLES), got 3")
    assert_invalid(in_a_batch, "body.audits.1.samples", "MAX_SAMPLES")
    assert (await row_counts(engine))["audit"] == 1


# Body size


async def test_body_over_max_body_bytes_is_413_before_parsing(
    client_with: ClientFactory, nothing_written: NothingWritten
) -> None:
    body = json.dumps(audit_request(content="x" * 2000)).encode()

    async with client_with(max_body_bytes=1024) as client:
        response = await client.post(
            "/audits", content=body, headers={"Content-Type": "application/json"}
        )

    assert response.request.headers["content-length"] == str(len(body))
    problem = assert_problem(response, 413, "payload_too_large")
    assert "1024 bytes (MAX_BODY_BYTES)" in problem["detail"]
    await nothing_written()


async def test_streamed_body_over_max_body_bytes_is_413(
    client_with: ClientFactory, nothing_written: NothingWritten
) -> None:
    """Without Content-Length the limit is enforced while the chunks arrive."""
    chunk = json.dumps(audit_request(content="x" * 2000)).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(chunk), 256):
            yield chunk[start : start + 256]

    async with client_with(max_body_bytes=1024) as client:
        response = await client.post(
            "/audits", content=chunks(), headers={"Content-Type": "application/json"}
        )

    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_problem(response, 413, "payload_too_large")
    await nothing_written()


async def test_streamed_body_under_max_body_bytes_is_accepted(
    client_with: ClientFactory, engine: AsyncEngine
) -> None:
    chunk = json.dumps(audit_request(content="x" * 500)).encode()
    assert len(chunk) < 1024

    async def chunks() -> AsyncIterator[bytes]:
        yield chunk[:100]
        yield chunk[100:]

    async with client_with(max_body_bytes=1024) as client:
        response = await client.post(
            "/audits", content=chunks(), headers={"Content-Type": "application/json"}
        )

    assert response.status_code == 202, response.text
    assert (await row_counts(engine))["audit"] == 1


# Path and query parameters


@pytest.mark.parametrize("path", ["/audits/{id}", "/audits/{id}/cancel", "/audits/{id}/retry"])
@pytest.mark.parametrize("bad_id", ["not-a-uuid", "123", "00000000-0000-0000-0000-00000000000g"])
async def test_malformed_audit_id_is_422(
    client: AsyncClient, nothing_written: NothingWritten, path: str, bad_id: str
) -> None:
    method = "GET" if path == "/audits/{id}" else "POST"

    response = await client.request(method, path.format(id=bad_id))

    assert_invalid(response, "path.audit_id", "valid UUID")
    await nothing_written()


BAD_TIMESTAMPS = [
    ("yesterday", "valid datetime"),
    ("2026-13-01", "valid datetime"),
    ("2026-01-01T25:00:00Z", "valid datetime"),
    ("2026-01-01T00:00:00+25:00", "valid datetime"),
    ("0001-01-01T00:00:00+01:00", "outside the supported range"),
    ("9999-12-31T23:59:59-01:00", "outside the supported range"),
]

INVALID_QUERIES = [
    case("limit 0", {"limit": 0}, "query.limit", "greater than or equal to 1"),
    case("limit 51", {"limit": 51}, "query.limit", "less than or equal to 50"),
    case("limit negative", {"limit": -5}, "query.limit", "greater than or equal to 1"),
    case("limit word", {"limit": "ten"}, "query.limit", "valid integer"),
    case("unknown status", {"status": "done"}, "query.status.0", "'queued', 'running'"),
    case("status case", [("status", "queued"), ("status", "QUEUED")], "query.status.1", "'queued'"),
    case("bad batch id", {"batch_id": "batch-1"}, "query.batch_id", "valid UUID"),
    case("long rubric", {"rubric": "r" * 65}, "query.rubric", "at most 64"),
    case("NUL in rubric", {"rubric": "a\x00"}, "query.rubric", "NUL"),
    case("long cursor", {"cursor": "c" * 513}, "query.cursor", "at most 512"),
    *[
        case(f"{name} {value}", {name: value}, f"query.{name}", fragment)
        for name in ("created_after", "created_before")
        for value, fragment in BAD_TIMESTAMPS
    ],
]


@pytest.mark.parametrize(("params", "loc", "fragment"), INVALID_QUERIES)
async def test_invalid_list_query_is_422(
    client: AsyncClient, params: Any, loc: str, fragment: str
) -> None:
    response = await client.get("/audits", params=params)

    assert_invalid(response, loc, fragment)


def forged(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


@pytest.fixture
async def real_cursor(client: AsyncClient) -> str:
    for n in range(3):
        await submit(client, subject=f"s{n}")
    cursor: str = (await client.get("/audits", params={"limit": 1})).json()["next_cursor"]
    assert cursor
    return cursor


@pytest.mark.parametrize(
    "cursor",
    [
        "not-a-cursor",
        "!!!",
        "é",
        "__79",  # base64 of bytes that are not UTF-8
        forged("garbage"),
        forged("a|b|c"),
        forged("2026-01-01T00:00:00+00:00|00000000-0000-0000-0000-000000000000"),
        forged("2026-01-01T00:00:00+00:00|00000000-0000-0000-0000-000000000000|000000000000"),
    ],
)
async def test_garbage_cursor_is_422_invalid_cursor(client: AsyncClient, cursor: str) -> None:
    response = await client.get("/audits", params={"cursor": cursor})

    body = assert_problem(response, 422, "invalid_cursor")
    assert "next_cursor" in body["detail"]


@pytest.mark.parametrize(
    "moment",
    [
        datetime(1, 1, 1, tzinfo=timezone(timedelta(hours=1))),
        datetime(9999, 12, 31, 23, tzinfo=timezone(timedelta(hours=-2))),
    ],
    ids=["before year 1 in UTC", "after year 9999 in UTC"],
)
async def test_a_signed_cursor_outside_the_calendar_is_422(
    app: FastAPI, client: AsyncClient, moment: datetime
) -> None:
    """Signed with the API's own key (say, by a bug), but the keyset cannot be queried."""
    cursors = page_cursors(app.state.cursor_key, AuditFilters())
    response = await client.get("/audits", params={"cursor": cursors.keyset(moment, uuid4())})

    assert_problem(response, 422, "invalid_cursor")


async def test_tampered_cursor_is_422_invalid_cursor(client: AsyncClient, real_cursor: str) -> None:
    token = base64.urlsafe_b64decode(real_cursor + "=" * (-len(real_cursor) % 4)).decode()
    created, row_id, _ = token.split("|")
    other_digit = "1" if created[3] != "1" else "2"
    other_hex = "a" if row_id[0] != "a" else "b"
    tampered_year = real_cursor_with(token, created=created[:3] + other_digit + created[4:])
    tampered_id = real_cursor_with(token, row_id=other_hex + row_id[1:])

    assert (await client.get("/audits", params={"cursor": real_cursor})).status_code == 200
    for cursor in (tampered_year, tampered_id):
        response = await client.get("/audits", params={"cursor": cursor})
        assert_problem(response, 422, "invalid_cursor")


def real_cursor_with(token: str, **changes: str) -> str:
    created, row_id, checksum = token.split("|")
    fields = {"created": created, "row_id": row_id, **changes}
    return forged(f"{fields['created']}|{fields['row_id']}|{checksum}")
