"""No content, model API key or bearer token ever appears in a log line.

Every JSON line the API and a worker write to stdout is captured, at DEBUG so that the
libraries' own logs are in, while audits with distinctive content run through the API and a
real arq worker: accepted, refused and invalid requests, a model that succeeds, fails and
answers out of shape, and a provider whose error bodies echo the key and the request, as
some do.
"""

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import httpx2
import pytest
from asgi_lifespan import LifespanManager
from openai import AsyncOpenAI

from api.app import create_app
from shared.audits.runs import Clock
from shared.config import Settings
from tests.factories import audit_request
from tests.fixtures.simulator import SimulatorHandle
from tests.worker.conftest import MODEL_TIMEOUT_S, build_worker, close_worker

# ASCII without quotes or backslashes: JSON lines would escape anything else.
CONTENT = "Sentinel content 4f9c2e: this toothbrush whitens teeth in a single day."
METADATA = "sentinel-metadata-8d31a7"
OPENAI_API_KEY = "sk-sentinel-0a5b7e0c9a1d4e6f8b2c"
BEARER_KEY = "sentinel-bearer-2c6f1e9d7a3b"
WRONG_TOKEN = "sentinel-wrong-token-9e4d5a8c"
SECRETS = [CONTENT, METADATA, OPENAI_API_KEY, BEARER_KEY, WRONG_TOKEN]
BEARER = {"Authorization": f"Bearer {BEARER_KEY}"}


def fragments(secret: str) -> list[str]:
    """The secret and its halves: a provider may echo a key cut short or masked."""
    half = len(secret) // 2
    return [secret, secret[:half], secret[half:]]


@asynccontextmanager
async def api(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test/api/v1") as client:
            yield client


# Retries come back at once.
NO_BACKOFF = Clock(retry_delay=lambda attempt, *, retry_after=None: 0.0)


async def run_worker(settings: Settings) -> None:
    worker = build_worker(settings, clock=NO_BACKOFF)
    try:
        await worker.main()
    finally:
        await close_worker(worker)


def echoing_provider(request: httpx2.Request, statuses: list[int]) -> httpx2.Response:
    """A provider whose errors quote the key and the request, as some providers' do."""
    message = f"Incorrect API key provided: {request.headers['authorization']}; request: "
    error = {"message": message + request.content.decode(), "type": "error", "code": None}
    return httpx2.Response(statuses.pop(0) if statuses else 401, json={"error": error})


def echoing_client(settings: Settings) -> AsyncOpenAI:
    """What `create_client` builds, talking to the echoing provider: 500, then 400, then 401s."""
    statuses = [500, 400]
    transport = httpx2.MockTransport(lambda request: echoing_provider(request, statuses))
    return AsyncOpenAI(
        api_key=settings.openai_api_key,
        base_url="http://provider.test/v1",
        max_retries=0,
        http_client=httpx2.AsyncClient(transport=transport),
    )


async def exercise_the_api(client: httpx.AsyncClient) -> None:
    """Accepted, unauthorized, invalid and oversized requests, all carrying the content."""
    body = audit_request(content=CONTENT, metadata={"client_ref": METADATA})
    for _ in range(3):
        created = await client.post("/audits", json=body, headers=BEARER)
        assert created.status_code == 202, created.text
        read = await client.get(f"/audits/{created.json()['id']}", headers=BEARER)
        assert read.json()["content"] == CONTENT
    for headers in ({"Authorization": f"Bearer {WRONG_TOKEN}"}, {}, {"Authorization": WRONG_TOKEN}):
        assert (await client.post("/audits", json=body, headers=headers)).status_code == 401
    invalid = [
        {**body, "criteria": [{"id": CONTENT, "description": CONTENT}]},
        {**body, "metadata": {"client_ref": METADATA * 1000}},
        {**body, "content": CONTENT + "\x00"},
        {**body, "unknown_field": CONTENT},
    ]
    for payload in invalid:
        assert (await client.post("/audits", json=payload, headers=BEARER)).status_code == 422
    broken = json.dumps(body)[:-5].encode()
    assert (await client.post("/audits", content=broken, headers=BEARER)).status_code == 422
    huge = {**body, "content": CONTENT * 2_000}
    assert (await client.post("/audits", json=huge, headers=BEARER)).status_code == 413


async def test_no_secret_appears_in_any_log_line(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    settings: Settings,
    sim: SimulatorHandle,
) -> None:
    settings = settings.model_copy(
        update={
            "api_keys": [BEARER_KEY],
            "log_level": "DEBUG",
            "max_body_bytes": 64 * 1024,
            "openai_api_key": OPENAI_API_KEY,
            "openai_base_url": sim.base_url,
            "openai_timeout_s": MODEL_TIMEOUT_S,
            # One job at a time, so that each audit meets the scripted faults meant for it.
            "worker_concurrency": 1,
        }
    )
    # Created here, not in a fixture, so that their log handlers write to the captured stdout.
    async with api(settings) as client:
        await exercise_the_api(client)
        sim.script(["ok", "500", "malformed", "malformed", "401"])
        await run_worker(settings)
        for _ in range(2):
            await client.post("/audits", json=audit_request(content=CONTENT), headers=BEARER)
        monkeypatch.setattr("worker.context.create_client", echoing_client)
        await run_worker(settings)
        listed = (await client.get("/audits?limit=50", headers=BEARER)).json()["items"]

    captured = capsys.readouterr()
    lines = (captured.out + captured.err).splitlines()
    events = [json.loads(line) for line in lines if line.startswith("{")]
    statuses = {e.get("status") for e in events if e["event"] == "request"}
    assert {200, 202, 401, 413, 422} <= statuses, statuses
    finished = [e for e in events if e["event"] in {"audit_succeeded", "audit_failed"}]
    assert len(finished) == len(listed) == 5
    errors = {a["error"]["code"] for a in listed if a["error"]}
    assert {"model_auth_failed", "model_bad_request", "invalid_model_output"} <= errors
    leaks = [
        (fragment, line)
        for secret in SECRETS
        for fragment in fragments(secret)
        for line in lines
        if fragment in line
    ]
    assert not leaks, leaks[:5]
