"""The OpenAPI document tells a client generator the truth about every audits route."""

from typing import Any

import pytest
from httpx import AsyncClient

from api.app import create_app
from shared.config import Settings

PREFIX = "/api/v1"
PROBLEM_REF = "#/components/schemas/Problem"

# (method, path, success status, success schema, the route's own problem statuses)
AUDIT_ROUTES = [
    ("post", "/audits", "202", "AuditRead", {"400", "413", "415", "429"}),
    ("get", "/audits", "200", "AuditPage", set()),
    ("get", "/audits/{audit_id}", "200", "AuditDetail", {"404"}),
    ("post", "/audits/{audit_id}/cancel", "200", "AuditRead", {"404", "409"}),
    ("post", "/audits/{audit_id}/retry", "202", "AuditRead", {"404", "409", "429"}),
]
ROUTE_IDS = [f"{method.upper()} {path}" for method, path, *_ in AUDIT_ROUTES]


@pytest.fixture(scope="module")
def document() -> dict[str, Any]:
    """The document, built once: generating it needs neither PostgreSQL nor Redis."""
    return create_app(Settings()).openapi()


def operation(document: dict[str, Any], method: str, path: str) -> dict[str, Any]:
    paths = document["paths"]
    assert PREFIX + path in paths, f"{path} is not documented"
    assert method in paths[PREFIX + path], f"{method.upper()} {path} is not documented"
    found: dict[str, Any] = paths[PREFIX + path][method]
    return found


def schema_ref(content: dict[str, Any], media_type: str = "application/json") -> str:
    ref: str = content[media_type]["schema"]["$ref"]
    return ref.removeprefix("#/components/schemas/")


async def test_document_and_docs_page_are_served(
    client: AsyncClient, document: dict[str, Any]
) -> None:
    served = await client.get("http://test/openapi.json")
    docs = await client.get("http://test/docs")

    assert served.json() == document
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text


def test_every_route_is_documented(document: dict[str, Any]) -> None:
    documented = {
        (method, path.removeprefix(PREFIX))
        for path, operations in document["paths"].items()
        for method in operations
    }

    expected = {(method, path) for method, path, *_ in AUDIT_ROUTES}
    expected |= {("get", "/health/live"), ("get", "/health/ready")}
    assert expected <= documented


@pytest.mark.parametrize(("method", "path", "status", "schema", "own"), AUDIT_ROUTES, ids=ROUTE_IDS)
def test_success_response_has_its_schema(
    document: dict[str, Any], method: str, path: str, status: str, schema: str, own: set[str]
) -> None:
    responses = operation(document, method, path)["responses"]

    assert status in responses
    assert schema_ref(responses[status]["content"]) == schema
    assert not {s for s in responses if s.startswith("2")} - {status}  # one success status


@pytest.mark.parametrize(("method", "path", "status", "schema", "own"), AUDIT_ROUTES, ids=ROUTE_IDS)
def test_problem_responses_are_problem_json(
    document: dict[str, Any], method: str, path: str, status: str, schema: str, own: set[str]
) -> None:
    responses = operation(document, method, path)["responses"]

    problems = {s for s in responses if not s.startswith("2")}
    assert problems == {"422", "503"} | own
    for problem in problems:
        content = responses[problem]["content"]
        assert list(content) == ["application/problem+json"], (problem, content)
        assert content["application/problem+json"]["schema"]["$ref"] == PROBLEM_REF
        assert "`code` is one of" in responses[problem]["description"]


@pytest.mark.parametrize(
    ("method", "path", "status", "codes"),
    [
        ("post", "/audits", "422", {"validation_error", "rubric_not_found"}),
        ("post", "/audits", "400", {"bad_request"}),
        ("post", "/audits", "413", {"payload_too_large"}),
        ("post", "/audits", "429", {"quota_exceeded", "rate_limited"}),
        ("get", "/audits", "422", {"validation_error", "invalid_cursor"}),
        ("get", "/audits/{audit_id}", "404", {"audit_not_found"}),
        ("post", "/audits/{audit_id}/cancel", "409", {"audit_not_cancellable"}),
        ("post", "/audits/{audit_id}/retry", "409", {"audit_not_retryable"}),
        ("post", "/audits/{audit_id}/retry", "503", {"database_unavailable"}),
    ],
)
def test_problem_responses_name_their_codes(
    document: dict[str, Any], method: str, path: str, status: str, codes: set[str]
) -> None:
    description = operation(document, method, path)["responses"][status]["description"]

    assert all(f"`{code}`" in description for code in codes), description


def test_submit_documents_its_request_body(document: dict[str, Any]) -> None:
    body = operation(document, "post", "/audits")["requestBody"]
    schemas = document["components"]["schemas"]

    assert body["required"] is True
    assert schema_ref(body["content"]) == "AuditCreate"
    create = schemas["AuditCreate"]
    assert create["additionalProperties"] is False
    assert set(create["required"]) == {"subject", "content"}
    assert create["properties"]["subject"]["maxLength"] == 200
    criterion = schemas["Criterion"]
    assert criterion["properties"]["id"]["pattern"] == "^[a-z0-9][a-z0-9_-]{0,63}$"
    assert criterion["properties"]["weight"]["exclusiveMinimum"] == 0
    assert criterion["properties"]["weight"]["maximum"] == 100


def test_list_documents_its_filters(document: dict[str, Any]) -> None:
    parameters = {p["name"]: p for p in operation(document, "get", "/audits")["parameters"]}

    assert set(parameters) == {
        "tenant",
        "status",
        "batch_id",
        "rubric",
        "priority",
        "created_after",
        "created_before",
        "limit",
        "cursor",
    }
    assert all(p["in"] == "query" for p in parameters.values())
    limit = parameters["limit"]["schema"]
    assert (limit["minimum"], limit["maximum"], limit["default"]) == (1, 50, 20)
    status = parameters["status"]["schema"]["anyOf"][0]
    assert status["type"] == "array"
    enum = status["items"]["$ref"].removeprefix("#/components/schemas/")
    statuses = document["components"]["schemas"][enum]["enum"]
    assert set(statuses) == {"queued", "running", "succeeded", "failed", "cancelled"}


def test_problem_schema_has_the_rfc_9457_fields(document: dict[str, Any]) -> None:
    problem = document["components"]["schemas"]["Problem"]

    assert set(problem["required"]) == {"type", "title", "status", "detail", "code"}
    assert "errors" in problem["properties"]


def test_ready_documents_its_503(document: dict[str, Any]) -> None:
    responses = operation(document, "get", "/health/ready")["responses"]

    assert schema_ref(responses["200"]["content"]) == "Health"
    assert schema_ref(responses["503"]["content"]) == "Health"
