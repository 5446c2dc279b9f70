"""API_KEYS turns on bearer keys for everything but health and docs."""

from collections.abc import AsyncIterator

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient

from api.app import create_app
from shared.config import Settings

AUDIT = {"subject": "s", "content": "c", "criteria": [{"id": "a", "description": "d"}]}


@pytest.fixture
async def guarded(settings: Settings) -> AsyncIterator[AsyncClient]:
    app = create_app(settings.model_copy(update={"api_keys": ["key-one", "key-two"]}))
    async with LifespanManager(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://test") as client:
            yield client


async def test_public_by_default(client: AsyncClient) -> None:
    response = await client.get("/audits")
    assert response.status_code == 200


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic a2V5LW9uZQ==", "Bearer "])
async def test_a_missing_or_wrong_key_is_refused(guarded: AsyncClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    response = await guarded.post("/api/v1/audits", json=AUDIT, headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "unauthorized"
    listed = await guarded.get("/api/v1/audits", headers=headers)
    assert listed.status_code == 401


@pytest.mark.parametrize("key", ["key-one", "key-two"])
async def test_any_configured_key_is_accepted(guarded: AsyncClient, key: str) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    created = await guarded.post("/api/v1/audits", json=AUDIT, headers=headers)
    assert created.status_code == 202
    assert (await guarded.get("/api/v1/batches", headers=headers)).status_code == 200


@pytest.mark.parametrize("path", ["/api/v1/health/live", "/docs", "/openapi.json"])
async def test_health_and_docs_stay_open(guarded: AsyncClient, path: str) -> None:
    assert (await guarded.get(path)).status_code == 200


async def test_the_schema_documents_the_bearer_scheme(guarded: AsyncClient) -> None:
    document = (await guarded.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    submit = document["paths"]["/api/v1/audits"]["post"]
    assert "401" in submit["responses"]
    assert submit["security"] == [{"bearer": []}]
