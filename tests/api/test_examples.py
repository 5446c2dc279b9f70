"""The interactive docs start from bodies the API accepts, and `/` leads to them."""

from typing import Any

from httpx import AsyncClient

from api.app import create_app
from api.examples import EXAMPLES
from shared.config import Settings


async def test_every_documented_example_is_accepted(client: AsyncClient) -> None:
    document = (await client.get("http://test/openapi.json")).json()
    sent = 0

    for (method, path), examples in EXAMPLES.items():
        content = document["paths"]["/api/v1" + path][method]["requestBody"]["content"]
        documented: dict[str, Any] = content["application/json"]["examples"]
        assert documented == examples
        for name, example in documented.items():
            response = await client.request(method, path, json=example["value"])
            assert response.is_success, (path, name, response.text)
            sent += 1

    assert sent == sum(len(examples) for examples in EXAMPLES.values())


def test_every_body_of_the_api_has_examples() -> None:
    document = create_app(Settings()).openapi()
    with_body = {
        (method, path.removeprefix("/api/v1"))
        for path, operations in document["paths"].items()
        for method, operation in operations.items()
        if "requestBody" in operation
    }

    assert with_body == set(EXAMPLES)


async def test_the_root_leads_to_the_docs(client: AsyncClient) -> None:
    response = await client.get("http://test/", follow_redirects=True)

    assert response.status_code == 200
    assert response.url.path == "/docs"
    assert "swagger" in response.text.lower()
