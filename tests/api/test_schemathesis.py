"""Schemathesis against the app's own OpenAPI document, with PostgreSQL and Redis behind it.

Every operation gets generated requests, valid and invalid (schemathesis' examples, coverage
and fuzzing phases, positive and negative, derandomized so that a run is repeatable); a
stateful run then follows the links schemathesis infers from the document: the id a POST or
a list returns feeds the GET, cancel, retry and results of that resource. Each response must
be one the document promises: no 5xx, and a documented status code, content type, headers
and body. The database holds audits in every state first, so that reads answer with results,
errors and usage, not only with empty pages. The same runs with `API_KEYS` set and a valid
key, which schemathesis drops and garbles to probe the 401.

One built-in check is left out: `positive_data_acceptance` wants every request that fits the
JSON schema accepted, but some rules cannot be said in JSON schema (exactly one of
`criteria` or `rubric`, unique criterion ids, ALLOWED_MODELS, no NUL, cursors only the API
issues), and their 422 is documented.
"""

from collections import Counter
from collections.abc import Iterator
from contextlib import suppress
from typing import Any

import hypothesis
import pytest
import schemathesis
from fastapi import FastAPI
from httpx import AsyncClient
from hypothesis import HealthCheck
from hypothesis.errors import FlakyStrategyDefinition
from schemathesis import Case, HookContext, Response
from schemathesis.python import asgi
from schemathesis.schemas import BaseSchema

from api.app import create_app
from shared.config import Settings
from tests.factories import audit_request, batch_request, rubric_request
from tests.fixtures.simulator import SimulatorHandle
from tests.worker.conftest import MODEL_TIMEOUT_S, build_worker, close_worker

API_KEY = "schemathesis-test-key"
BEARER = {"Authorization": f"Bearer {API_KEY}"}

EXAMPLES_PER_OPERATION = 30
STATEFUL_SCENARIOS = 20
STATEFUL_STEPS = 6
# Which links a run of scenarios happens to take is up to its seed; runs go on, seed after
# seed, until every link below has been followed.
STATEFUL_RUNS = 8
# Resources reached through an id an earlier response gave, and found.
FOLLOWED_LINKS = {
    ("GET /api/v1/audits/{audit_id}", 200),
    ("GET /api/v1/batches/{batch_id}", 200),
    ("GET /api/v1/batches/{batch_id}/results", 200),
    ("GET /api/v1/rubrics/{name}", 200),
}
DEFAULT_CRITERIA = [{"id": "generated", "description": "Stands in for the rubric."}]

# The app serves many examples in a row; what they share is the database, on purpose.
FUZZ = hypothesis.settings(
    max_examples=EXAMPLES_PER_OPERATION,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


def coherent(audit: dict[str, Any]) -> dict[str, Any]:
    """An audit request that obeys the rules its JSON schema cannot state."""
    kept = {k: v for k, v in audit.items() if k not in {"rubric", "rubric_version", "model"}}
    criteria = kept.get("criteria") or DEFAULT_CRITERIA
    return {**kept, "criteria": list({c["id"]: c for c in criteria}.values())}


def coherent_submissions(_: HookContext, case: Case[Any]) -> Case[Any]:
    """Valid generated submissions made acceptable, so that links start from real resources."""
    positive = case.meta is not None and case.meta.generation.mode.is_positive
    if not positive or not isinstance(case.body, dict):
        return case
    body: dict[str, Any] = case.body
    if case.operation.label == "POST /api/v1/audits":
        case.body = coherent(body)
    elif case.operation.label == "POST /api/v1/batches":
        case.body = {**body, "audits": [coherent(audit) for audit in body["audits"]]}
    return case


def load_schema(**overrides: Any) -> BaseSchema:
    """The document of an app with these settings, as schemathesis sees it."""
    document = create_app(Settings(**overrides)).openapi()
    schema = schemathesis.openapi.from_dict(document)
    schema.config.checks.update(excluded_check_names=["positive_data_acceptance"])
    # The key is sent by the tests; schemathesis still drops and garbles it to probe the 401.
    schema.config.generation.update(with_security_parameters=False)
    schema.hook("map_case")(coherent_submissions)
    return schema


# Built once at collection: the document needs neither PostgreSQL nor Redis.
PUBLIC = load_schema(api_keys=[])
GUARDED = load_schema(api_keys=[API_KEY])


@pytest.fixture
async def seeded(client: AsyncClient, sim: SimulatorHandle, settings: Settings) -> None:
    """Audits succeeded, failed, cancelled and queued, a finished batch and a rubric."""
    await client.post("/rubrics", json=rubric_request())
    await client.post("/batches", json=batch_request(size=2))
    for _ in range(2):
        await client.post("/audits", json=audit_request())
    sim.script(["ok", "ok", "ok", "401"])
    worker = build_worker(
        settings.model_copy(
            update={"openai_base_url": sim.base_url, "openai_timeout_s": MODEL_TIMEOUT_S}
        )
    )
    try:
        await worker.main()
    finally:
        await close_worker(worker)
    cancelled = (await client.post("/audits", json=audit_request())).json()
    await client.post(f"/audits/{cancelled['id']}/cancel")
    await client.post("/audits", json=audit_request())
    listed = (await client.get("/audits")).json()["items"]
    assert {a["status"] for a in listed} == {"succeeded", "failed", "cancelled", "queued"}


def serve(settings: Settings) -> Iterator[FastAPI]:
    """An app whose lifespan schemathesis' ASGI transport runs, on an event loop of its own."""
    app = create_app(settings)
    yield app
    asgi.shutdown_lifespans()


@pytest.fixture
def public_app(settings: Settings, seeded: None) -> Iterator[FastAPI]:
    yield from serve(settings)


@pytest.fixture
def guarded_app(settings: Settings, seeded: None) -> Iterator[FastAPI]:
    yield from serve(settings.model_copy(update={"api_keys": [API_KEY]}))


def sent_to(app: FastAPI, case: Case[Any]) -> Case[Any]:
    """The case, bound to `app`, as are the probes that some checks send of their own."""
    case.operation.app = case.operation.schema.app = app
    return case


@PUBLIC.parametrize()
@FUZZ
def test_every_operation_answers_as_documented(case: Case[Any], public_app: FastAPI) -> None:
    sent_to(public_app, case).call_and_validate()


@GUARDED.parametrize()
@FUZZ
def test_every_operation_answers_as_documented_with_api_keys(
    case: Case[Any], guarded_app: FastAPI
) -> None:
    sent_to(guarded_app, case).call_and_validate(headers=BEARER)


def test_linked_operations_answer_as_documented(public_app: FastAPI) -> None:
    answered = follow_links(load_schema(api_keys=[]), public_app)

    assert answered.keys() >= FOLLOWED_LINKS, sorted(answered.items())


def test_linked_operations_answer_as_documented_with_api_keys(guarded_app: FastAPI) -> None:
    answered = follow_links(load_schema(api_keys=[API_KEY]), guarded_app, headers=BEARER)

    assert answered.keys() >= FOLLOWED_LINKS, sorted(answered.items())


def follow_links(
    schema: BaseSchema, app: FastAPI, headers: dict[str, str] | None = None
) -> Counter[tuple[str, int]]:
    """Scenarios of calls that take ids from earlier answers; how often each status came.

    Runs of `STATEFUL_SCENARIOS`, seeded 0, 1, 2, …, until all of `FOLLOWED_LINKS` answered.
    The scenarios share one live database, so a scenario Hypothesis replays can meet other
    rows than the first time and take other links; Hypothesis then stops the run with
    `FlakyStrategyDefinition`, a limit of replaying, not a wrong answer (every answer is
    checked against the document as it comes, and a failed check raises its own error).
    Such a run ends there and the next seed carries on.
    """
    schema.app = app
    answered: Counter[tuple[str, int]] = Counter()
    for seed in range(STATEFUL_RUNS):
        answered += _run_scenarios(schema, headers, seed)
        if answered.keys() >= FOLLOWED_LINKS:
            break
    return answered


def _run_scenarios(
    schema: BaseSchema, headers: dict[str, str] | None, seed: int
) -> Counter[tuple[str, int]]:
    answered: Counter[tuple[str, int]] = Counter()

    @hypothesis.seed(seed)
    # A base class made at run time from the schema, which mypy cannot follow.
    class Links(schema.as_state_machine()):  # type: ignore[misc]
        def get_call_kwargs(self, case: Case[Any]) -> dict[str, Any]:
            return {"headers": headers} if headers else {}

        def after_call(self, response: Response, case: Case[Any]) -> None:
            answered[case.operation.label, response.status_code] += 1

    settings = hypothesis.settings(
        FUZZ, max_examples=STATEFUL_SCENARIOS, stateful_step_count=STATEFUL_STEPS
    )
    with suppress(FlakyStrategyDefinition):
        Links.run(settings=settings)
    return answered
