"""The simulator app in process (httpx's ASGI transport) and its command."""

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import typer
import uvicorn
from typer.testing import CliRunner

from cli import simulator_command
from cli.simulator import SimulatorConfig, create_app
from cli.simulator_command import parse_fault_kinds, parse_latency
from shared.llm.errors import InvalidModelOutput
from shared.llm.prompt import build_messages, response_format
from shared.llm.schemas import CriterionText, validate_reply

CRITERIA = [CriterionText(id=f"c{i}", description=f"Criterion number {i}.") for i in range(5)]
CONTENT = " ".join(
    f"Sentence {i} of the product page says something about recycled materials and shipping."
    for i in range(40)
)


def audit_body(content: str = CONTENT, criteria: list[CriterionText] = CRITERIA) -> dict[str, Any]:
    """A request as `audit_content` sends it."""
    return {
        "model": "gpt-4o-mini",
        "messages": build_messages(subject="Page", content=content, criteria=criteria),
        "response_format": response_format([c.id for c in criteria]),
    }


async def client_for(config: SimulatorConfig) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=create_app(config))
    return httpx.AsyncClient(transport=transport, base_url="http://sim")


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with await client_for(SimulatorConfig(seed=1)) as client:
        yield client


async def complete(client: httpx.AsyncClient, body: dict[str, Any] | None = None) -> httpx.Response:
    return await client.post("/v1/chat/completions", json=body or audit_body())


def choice(response: httpx.Response) -> dict[str, Any]:
    first: dict[str, Any] = response.json()["choices"][0]
    return first


async def test_a_reply_follows_the_schema_and_quotes_the_content(client: httpx.AsyncClient) -> None:
    response = await complete(client)

    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("sim-")
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == "gpt-4o-mini"
    assert choice(response)["finish_reason"] == "stop"
    findings, summary, dropped = validate_reply(
        choice(response)["message"]["content"], criteria=CRITERIA, content=CONTENT
    )
    assert dropped == 0
    assert "synthetic" in summary
    quotes = [quote for finding in findings for quote in finding.evidence]
    assert quotes
    assert all(quote in CONTENT and quote == quote.strip() for quote in quotes)


async def test_usage_is_about_four_characters_a_token(client: httpx.AsyncClient) -> None:
    body = audit_body()

    usage = (await complete(client, body)).json()["usage"]

    prompt_chars = len(json.dumps(body["messages"], ensure_ascii=False))
    assert abs(usage["prompt_tokens"] - prompt_chars / 4) <= 1
    assert usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


async def test_a_share_of_the_prompt_is_reported_as_cached_as_configured() -> None:
    async with await client_for(SimulatorConfig(cached_share=0.25)) as client:
        usage = (await complete(client)).json()["usage"]

        assert usage["prompt_tokens_details"]["cached_tokens"] == usage["prompt_tokens"] // 4
        await client.post("/_control/caching", json={"cached_share": 0.5})
        halved = (await complete(client)).json()["usage"]
        assert halved["prompt_tokens_details"]["cached_tokens"] == halved["prompt_tokens"] // 2
        await client.post("/_control/reset")
        again = (await complete(client)).json()["usage"]
        assert again["prompt_tokens_details"]["cached_tokens"] == again["prompt_tokens"] // 4


async def test_no_tokens_are_cached_by_default(client: httpx.AsyncClient) -> None:
    usage = (await complete(client)).json()["usage"]

    assert usage["prompt_tokens_details"] == {"cached_tokens": 0}


async def test_answers_take_the_latency_set_until_a_reset(client: httpx.AsyncClient) -> None:
    await client.post("/_control/latency", json={"min_ms": 200, "max_ms": 200})
    started = time.monotonic()
    await complete(client)
    slow = time.monotonic() - started

    await client.post("/_control/reset")
    started = time.monotonic()
    await complete(client)

    assert slow >= 0.2
    assert time.monotonic() - started < 0.2


async def test_the_same_request_gets_the_same_answer(client: httpx.AsyncClient) -> None:
    first, second = await complete(client), await complete(client)
    other = await complete(client, audit_body(content=CONTENT + " One more sentence."))

    assert choice(first)["message"] == choice(second)["message"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert choice(other)["message"] != choice(first)["message"]


async def test_the_answer_does_not_depend_on_the_fault_draws() -> None:
    async with (
        await client_for(SimulatorConfig(seed=1)) as one,
        await client_for(SimulatorConfig(seed=2, latency_max_ms=1)) as two,
    ):
        assert choice(await complete(one))["message"] == choice(await complete(two))["message"]


async def test_evidence_quotes_content_without_spaces_or_very_short(
    client: httpx.AsyncClient,
) -> None:
    for content in ["x", "a" * 5000, "短文本没有空格" * 100]:
        reply = choice(await complete(client, audit_body(content=content)))["message"]["content"]
        findings, _, dropped = validate_reply(reply, criteria=CRITERIA, content=content)
        assert dropped == 0
        assert all(len(quote) <= 200 for f in findings for quote in f.evidence)


async def test_a_script_is_consumed_in_order_then_requests_succeed(
    client: httpx.AsyncClient,
) -> None:
    queued = await client.post("/_control/script", json={"faults": ["429", "500", "ok", "503"]})

    statuses = [(await complete(client)).status_code for _ in range(5)]

    assert queued.json() == {"queued": 4}
    assert statuses == [429, 500, 200, 503, 200]
    stats = (await client.get("/_control/stats")).json()
    assert stats == {"requests": 5, "outcomes": {"429": 1, "500": 1, "ok": 2, "503": 1}}


async def test_a_new_script_replaces_the_old_one(client: httpx.AsyncClient) -> None:
    await client.post("/_control/script", json={"faults": ["500", "500"]})
    await client.post("/_control/script", json={"faults": ["429"]})

    assert [(await complete(client)).status_code for _ in range(2)] == [429, 200]


async def test_a_rate_limit_says_when_to_retry() -> None:
    async with await client_for(SimulatorConfig(retry_after_s=42)) as client:
        await client.post("/_control/script", json={"faults": ["429"]})
        response = await complete(client)

    assert response.status_code == 429
    assert response.headers["retry-after"] == "42"
    assert response.headers["x-request-id"].startswith("sim-")
    assert response.json()["error"]["code"] == "rate_limit_exceeded"


async def test_context_length_fault_looks_like_openai(client: httpx.AsyncClient) -> None:
    await client.post("/_control/script", json={"faults": ["context_length"]})

    response = await complete(client)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


async def scripted(client: httpx.AsyncClient, fault: str) -> dict[str, Any]:
    await client.post("/_control/script", json={"faults": [fault]})
    response = await complete(client)
    assert response.status_code == 200
    return choice(response)


async def test_malformed_output_is_not_json(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "malformed")

    assert reply["finish_reason"] == "stop"
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply["message"]["content"])


async def test_truncated_output_stops_for_length(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "truncated")

    assert reply["finish_reason"] == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(reply["message"]["content"])


async def test_a_refusal_has_no_content(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "refusal")

    assert reply["message"]["content"] is None
    assert reply["message"]["refusal"]


async def test_content_filter_stops_the_reply(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "content_filter")

    assert (reply["finish_reason"], reply["message"]["content"]) == ("content_filter", None)


async def test_wrong_ids_break_the_id_rule_only(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "wrong_ids")

    with pytest.raises(InvalidModelOutput, match="unknown criterion ids: 'sim_unknown_criterion'"):
        validate_reply(reply["message"]["content"], criteria=CRITERIA, content=CONTENT)


async def test_a_hostile_reply_is_issue_8s_probe(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "hostile")

    document = json.loads(reply["message"]["content"])
    probe = " ".join(["a"] * 20000 + ["b"])
    assert [f["criterion_id"] for f in document["findings"]] == [c.id for c in CRITERIA]
    assert all(f["evidence"] == [probe] * 6 for f in document["findings"])
    assert len(document["findings"][0]["rationale"]) == 1_000_000
    with pytest.raises(InvalidModelOutput, match="the reply is longer than"):
        validate_reply(reply["message"]["content"], criteria=CRITERIA, content=CONTENT)


async def test_a_contradicting_reply_fails_at_a_perfect_score(client: httpx.AsyncClient) -> None:
    reply = await scripted(client, "contradiction")

    first = json.loads(reply["message"]["content"])["findings"][0]
    assert (first["verdict"], first["score"]) == ("fail", 100)
    with pytest.raises(InvalidModelOutput, match="'c0' is fail with score 100"):
        validate_reply(reply["message"]["content"], criteria=CRITERIA, content=CONTENT)


async def inconsistent_answers(client: httpx.AsyncClient, count: int) -> list[str]:
    await client.post("/_control/script", json={"faults": ["inconsistent"] * count})
    return [choice(await complete(client))["message"]["content"] for _ in range(count)]


async def test_an_inconsistent_judge_answers_the_same_request_differently(
    client: httpx.AsyncClient,
) -> None:
    deterministic = choice(await complete(client))["message"]["content"]

    answers = await inconsistent_answers(client, 5)

    for answer in answers:
        validate_reply(answer, criteria=CRITERIA, content=CONTENT)  # valid, only inconsistent
    assert len({deterministic, *answers}) == 6
    await client.post("/_control/reset")
    assert await inconsistent_answers(client, 5) == answers, "the same answers after a reset"


async def test_a_subjects_script_applies_to_its_audits_only(client: httpx.AsyncClient) -> None:
    other = audit_body()
    targeted = {
        **other,
        "messages": build_messages(subject="T", content=CONTENT, criteria=CRITERIA),
    }
    await client.post("/_control/script", json={"faults": ["500", "429"], "subject": "T"})
    await client.post("/_control/script", json={"faults": ["503"]})

    statuses = [
        (await complete(client, body)).status_code
        for body in (other, targeted, other, targeted, targeted)
    ]

    assert statuses == [503, 500, 200, 429, 200]


async def test_an_unknown_script_step_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/_control/script", json={"faults": ["ok", "explode"]})

    assert response.status_code == 422


async def test_requests_are_recorded_until_reset(client: httpx.AsyncClient) -> None:
    body = audit_body()
    await client.post("/_control/script", json={"faults": ["500"]})
    sent_after = time.time()
    await complete(client, body)
    answered_before = time.time()

    recorded = (await client.get("/_control/requests")).json()
    reset = await client.post("/_control/reset")

    assert recorded["requests"] == [json.loads(json.dumps(body))]
    [received_at] = recorded["received_at"]
    assert sent_after <= received_at <= answered_before
    assert reset.status_code == 204
    assert (await client.get("/_control/requests")).json() == {"requests": [], "received_at": []}
    assert (await client.get("/_control/stats")).json() == {"requests": 0, "outcomes": {}}
    assert (await complete(client)).status_code == 200


async def test_only_the_latest_requests_are_kept() -> None:
    async with await client_for(SimulatorConfig(record_limit=2)) as client:
        for content in ["one", "two", "three"]:
            await complete(client, audit_body(content=content))
        recorded = (await client.get("/_control/requests")).json()["requests"]

    contents = [json.loads(r["messages"][1]["content"])["content"] for r in recorded]
    assert contents == ["two", "three"]


async def test_random_faults_are_drawn_from_the_configured_kinds() -> None:
    config = SimulatorConfig(fault_rate=1.0, faults=("500", "refusal"), seed=3)
    async with await client_for(config) as client:
        for _ in range(20):
            await complete(client)
        outcomes = (await client.get("/_control/stats")).json()["outcomes"]

    assert set(outcomes) == {"500", "refusal"}
    assert sum(outcomes.values()) == 20


async def test_a_script_comes_before_random_faults() -> None:
    async with await client_for(SimulatorConfig(fault_rate=1.0, faults=("500",))) as client:
        await client.post("/_control/script", json={"faults": ["ok"]})

        assert [(await complete(client)).status_code for _ in range(2)] == [200, 500]


async def test_latency_is_added() -> None:
    async with await client_for(SimulatorConfig(latency_min_ms=80, latency_max_ms=100)) as client:
        started = time.perf_counter()
        await complete(client)

    assert time.perf_counter() - started >= 0.08


@pytest.mark.parametrize(
    "body",
    [
        {"model": "m", "messages": [{"role": "user", "content": "Hello"}]},
        {**audit_body(), "response_format": {"type": "json_object"}},
        {"model": "m"},
        [],
    ],
)
async def test_a_request_that_is_not_an_audit_is_refused(
    client: httpx.AsyncClient, body: Any
) -> None:
    response = await client.post("/v1/chat/completions", json=body)

    assert response.status_code == 400
    assert response.json()["error"]["message"]


async def test_a_body_that_is_not_json_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", content=b"{not json")

    assert response.status_code == 400


async def test_models_and_health(client: httpx.AsyncClient) -> None:
    models = (await client.get("/v1/models")).json()
    health = await client.get("/health")

    assert [m["id"] for m in models["data"]] == ["auditq-simulator"]
    assert health.json() == {"status": "ok", "results": "synthetic"}


@pytest.mark.parametrize(
    "config",
    [
        {"fault_rate": 1.5},
        {"fault_rate": -0.1},
        {"latency_min_ms": 10, "latency_max_ms": 5},
        {"fault_rate": 0.5, "faults": ()},
        {"faults": ("418",)},
    ],
)
def test_an_impossible_config_is_refused(config: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies with the mistake
        SimulatorConfig(**config)


def test_parse_latency() -> None:
    assert parse_latency("200") == (200.0, 200.0)
    assert parse_latency("100..500") == (100.0, 500.0)
    for value in ["fast", "500..100", "-1", "1..x"]:
        with pytest.raises(ValueError, match=repr(value)):
            parse_latency(value)


def test_parse_fault_kinds() -> None:
    assert parse_fault_kinds("429, hang,,refusal") == ("429", "hang", "refusal")
    assert parse_fault_kinds("") == ()
    with pytest.raises(ValueError, match="teapot"):
        parse_fault_kinds("429,teapot")


def typer_app() -> typer.Typer:
    """The way cli/main.py registers the command."""
    app = typer.Typer()
    app.command("simulator")(simulator_command.command)
    app.command("other")(lambda: None)
    return app


def test_the_command_runs_uvicorn_with_the_options(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[Any, dict[str, Any]]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    # The API's setting, in the same environment: uvicorn would read it too.
    monkeypatch.setenv("WEB_CONCURRENCY", "3")

    options = "--port 8123 --latency-ms 10..20 --fault-rate 0.25 --faults 429,hang"
    options += " --retry-after-s 3 --seed 7"

    result = CliRunner().invoke(typer_app(), ["simulator", *options.split()])

    assert result.exit_code == 0, result.output
    assert "SIMULATOR — results are synthetic" in result.output
    assert "OPENAI_BASE_URL=http://127.0.0.1:8123/v1" in result.output
    [(app, run_options)] = calls
    assert run_options == {"host": "127.0.0.1", "port": 8123, "access_log": False, "workers": 1}
    assert uvicorn.Config(app, **run_options).workers == 1
    assert app.state.simulator.config == SimulatorConfig(
        latency_min_ms=10,
        latency_max_ms=20,
        fault_rate=0.25,
        faults=("429", "hang"),
        retry_after_s=3,
        seed=7,
    )


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--latency-ms", "slow"], "--latency-ms"),
        (["--faults", "429,teapot"], "--faults"),
        (["--fault-rate", "2"], "--fault-rate"),
    ],
)
def test_the_command_refuses_bad_options(
    monkeypatch: pytest.MonkeyPatch, args: list[str], option: str
) -> None:
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: pytest.fail("ran"))

    result = CliRunner().invoke(typer_app(), ["simulator", *args])

    assert result.exit_code == 2
    assert option in result.output
