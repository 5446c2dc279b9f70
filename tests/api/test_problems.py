"""Problem details a newcomer can act on: 415 for a body that is not JSON, and `type`
references the API itself resolves to a description of the code."""

import re
from uuid import uuid4

from httpx import AsyncClient

from api.app import create_app
from shared.config import Settings
from tests.factories import audit_request

ROOT = "http://test"


async def test_a_form_body_is_a_415_that_says_to_send_json(client: AsyncClient) -> None:
    # What `curl -d '{...}'` sends without `-H 'content-type: application/json'`.
    response = await client.post(
        "/audits",
        content=b'{"subject": "x"}',
        headers={"content-type": "application/x-www-form-urlencoded"},
    )

    assert response.status_code == 415
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["code"] == "unsupported_media_type"
    assert "Content-Type: application/json" in problem["detail"]
    assert "application/x-www-form-urlencoded" in problem["detail"]


async def test_json_with_a_charset_or_a_json_suffix_is_json(client: AsyncClient) -> None:
    for media_type in ("application/json; charset=utf-8", "application/merge-patch+json"):
        response = await client.post(
            "/audits", json=audit_request(), headers={"content-type": media_type}
        )
        assert response.status_code == 202, (media_type, response.text)


async def test_a_problem_type_resolves_to_what_its_code_means(client: AsyncClient) -> None:
    problem = (await client.get(f"/audits/{uuid4()}")).json()

    described = await client.get(ROOT + problem["type"])

    assert problem["type"] == "/problems/audit_not_found"
    assert described.status_code == 200
    assert described.json()["code"] == "audit_not_found"
    assert described.json()["status"] == [404]


async def test_every_documented_code_is_described(client: AsyncClient) -> None:
    document = create_app(Settings()).openapi()
    descriptions = [
        response["description"]
        for operations in document["paths"].values()
        for operation in operations.values()
        for status, response in operation["responses"].items()
        if not status.startswith("2") and "`code` is one of" in response["description"]
    ]
    codes = {code for text in descriptions for code in re.findall(r"`(\w+)`", text)} - {"code"}

    for code in sorted(codes):
        described = await client.get(f"{ROOT}/problems/{code}")
        assert described.status_code == 200, code
        assert described.json()["description"], code
    assert {"validation_error", "unsupported_media_type", "rubric_not_found"} <= codes


async def test_an_unknown_code_is_a_404(client: AsyncClient) -> None:
    response = await client.get(f"{ROOT}/problems/no_such_code")

    assert response.status_code == 404
    assert response.json()["code"] == "not_found"
