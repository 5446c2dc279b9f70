"""The bundled OpenAI-compatible model simulator: synthetic audits and faults on demand.

It answers `POST /v1/chat/completions` the way a model asked by `shared.llm` would: it reads
the criterion ids from the reply schema and the content from the data message, and returns
findings that are deterministic for a given request (seeded by a hash of its body) and
quote the content for evidence. Faults are injected at random (`fault_rate`, drawn
uniformly from `faults`) or scripted by tests through `/_control/script`, for every
request or for the audits of one subject. Two faults answer with a valid reply:
`inconsistent`, a judge that answers the same request differently each time it is asked
(as `samples` are meant to reveal), and `contradiction`, a reply whose first finding is
`fail` with a score of 100.

Everything is async and in memory, so one process serves hundreds of concurrent requests;
only the last `record_limit` request bodies are kept. The command and its options are
in `cli.simulator_command`, which `auditq` loads without this server.
"""

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, replace
from typing import Any, Literal, Self

import typer
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cli.simulator_command import DEFAULT_FAULTS, FAULT_KINDS, FaultKind, command
from shared.llm.prompt import AuditData, find_audit_data
from shared.llm.schemas import VERDICTS

ScriptStep = Literal["ok"] | FaultKind
MODEL_ID = "auditq-simulator"
UNKNOWN_CRITERION_ID = "sim_unknown_criterion"
_MAX_QUOTE_CHARS = 200
# The hostile reply of issue 8's probe: valid in shape, with six quotes per finding of
# 20,000 words of "a" then "b" (against content of "a a a …" each missed by its last
# word), and a rationale of a million characters.
_HOSTILE_QUOTE = " ".join(["a"] * 20_000 + ["b"])
_HOSTILE_QUOTES = 6
_HOSTILE_RATIONALE_CHARS = 1_000_000

# kind -> (HTTP status, OpenAI error code, message)
_STATUS_FAULTS: dict[str, tuple[int, str | None, str]] = {
    "429": (429, "rate_limit_exceeded", "Rate limit reached for requests (simulated)."),
    "500": (500, None, "The server had an error while processing your request (simulated)."),
    "503": (503, None, "The engine is currently overloaded (simulated)."),
    "400": (400, None, "Invalid request (simulated)."),
    "401": (401, "invalid_api_key", "Incorrect API key provided (simulated)."),
    "403": (403, None, "You are not allowed to use this model (simulated)."),
    "404": (404, "model_not_found", "The model does not exist (simulated)."),
    "context_length": (
        400,
        "context_length_exceeded",
        "This model's maximum context length is 8192 tokens (simulated).",
    ),
}
_VERDICT_WEIGHTS = (5, 3, 2, 1)
_SCORE_RANGES = {"pass": (75, 100), "partial": (40, 74), "fail": (0, 39), "not_applicable": (0, 0)}
_VERDICT_PHRASES = {
    "pass": "meets",
    "partial": "partly meets",
    "fail": "does not meet",
    "not_applicable": "is not concerned by",
}


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves; latencies in milliseconds, `hang_s` bounds a hang."""

    latency_min_ms: float = 0.0
    latency_max_ms: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[FaultKind, ...] = DEFAULT_FAULTS
    retry_after_s: int = 1
    hang_s: float = 600.0
    record_limit: int = 1000
    seed: int | None = None
    # The share of each prompt's tokens reported as cached (`prompt_tokens_details`).
    cached_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.latency_min_ms <= self.latency_max_ms:
            raise ValueError("latency must be 0 <= latency_min_ms <= latency_max_ms")
        if not 0 <= self.fault_rate <= 1:
            raise ValueError("fault_rate must be between 0 and 1")
        if not 0 <= self.cached_share <= 1:
            raise ValueError("cached_share must be between 0 and 1")
        if self.fault_rate > 0 and not self.faults:
            raise ValueError("a fault_rate above 0 needs at least one fault kind")
        unknown = sorted(set(self.faults) - set(FAULT_KINDS))
        if unknown:
            raise ValueError(f"unknown fault kinds: {', '.join(unknown)}")


class SimulatorState:
    """What the simulator remembers between requests: script, recorded bodies, counters."""

    def __init__(self, config: SimulatorConfig) -> None:
        self.config = config
        self.script: deque[ScriptStep] = deque()
        # Scripts for the audits of one subject, used before the script for any request.
        self.subject_scripts: dict[str, deque[ScriptStep]] = {}
        self.received: deque[Any] = deque(maxlen=config.record_limit)
        # When each recorded request arrived (`time.time()`), in the same order.
        self.received_at: deque[float] = deque(maxlen=config.record_limit)
        self.outcomes: Counter[str] = Counter()
        self.cached_share = config.cached_share
        self.latency_ms = (config.latency_min_ms, config.latency_max_ms)
        self._random = random.Random(config.seed)
        self._reseeded = 0

    def next_outcome(self, subject: str | None = None) -> ScriptStep:
        """The scripted step if any is left, else a random fault at `fault_rate`, else ok."""
        subject_script = self.subject_scripts.get(subject) if subject is not None else None
        if subject_script:
            return subject_script.popleft()
        if self.script:
            return self.script.popleft()
        if self._random.random() < self.config.fault_rate:
            return self._random.choice(self.config.faults)
        return "ok"

    def another_seed(self, seed: bytes) -> bytes:
        """A seed for an answer unlike the last ones to the same request: the request's
        seed and how many such answers came before. Each reset starts the count again, so
        n requests get the same n answers, in whatever order they arrive."""
        self._reseeded += 1
        return hashlib.sha256(seed + self._reseeded.to_bytes(8, "big")).digest()

    def latency_s(self) -> float:
        return self._random.uniform(*self.latency_ms) / 1000

    def reset(self) -> None:
        self.script.clear()
        self.subject_scripts.clear()
        self.received.clear()
        self.received_at.clear()
        self.outcomes.clear()
        self._reseeded = 0
        self.cached_share = self.config.cached_share
        self.latency_ms = (self.config.latency_min_ms, self.config.latency_max_ms)


class Caching(BaseModel):
    """Body of `POST /_control/caching`: the share of prompt tokens reported as cached."""

    model_config = ConfigDict(extra="forbid")

    cached_share: float = Field(ge=0, le=1)


class Latency(BaseModel):
    """Body of `POST /_control/latency`: how long answers take, in milliseconds."""

    model_config = ConfigDict(extra="forbid")

    min_ms: float = Field(ge=0)
    max_ms: float = Field(ge=0)

    @model_validator(mode="after")
    def ordered(self) -> Self:
        if self.min_ms > self.max_ms:
            raise ValueError("min_ms must not exceed max_ms")
        return self


class Script(BaseModel):
    """Body of `POST /_control/script`: what the next requests get, in order.

    With `subject`, only the requests auditing content of that subject follow it.
    """

    model_config = ConfigDict(extra="forbid")

    faults: list[ScriptStep]
    subject: str | None = None


def create_app(config: SimulatorConfig) -> FastAPI:
    """The simulator as an ASGI app."""
    app = FastAPI(title="auditq model simulator (synthetic results)")
    app.state.simulator = SimulatorState(config)
    app.add_api_route("/v1/chat/completions", chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", list_models, methods=["GET"])
    app.add_api_route("/health", health, methods=["GET"])
    app.add_api_route("/_control/script", set_script, methods=["POST"])
    app.add_api_route("/_control/caching", set_caching, methods=["POST"], status_code=204)
    app.add_api_route("/_control/latency", set_latency, methods=["POST"], status_code=204)
    app.add_api_route("/_control/requests", recorded_requests, methods=["GET"])
    app.add_api_route("/_control/stats", stats, methods=["GET"])
    app.add_api_route("/_control/reset", reset, methods=["POST"], status_code=204)
    return app


def _state(request: Request) -> SimulatorState:
    state: SimulatorState = request.app.state.simulator
    return state


async def chat_completions(request: Request) -> Response:
    """An audit reply, or the fault this request was chosen for."""
    received_at = time.time()
    state = _state(request)
    try:
        body = await request.json()
    except ValueError:
        return _error_response(400, "invalid_request_error", "The body is not valid JSON.")
    state.received.append(body)
    state.received_at.append(received_at)
    audit = _audit_request(body)
    outcome = state.next_outcome(audit.data.subject if audit else None)
    state.outcomes[outcome] += 1
    if outcome == "hang":
        return await _hang(request, state.config.hang_s)
    await asyncio.sleep(state.latency_s())
    if outcome in _STATUS_FAULTS:
        return _status_fault(outcome, retry_after_s=state.config.retry_after_s)
    if audit is None:
        message = "Expected auditq's data message and a json_schema response_format."
        return _error_response(400, "invalid_request_error", message)
    if outcome == "inconsistent":
        audit = replace(audit, seed=state.another_seed(audit.seed))
    return _completion_response(body, audit, outcome, cached_share=state.cached_share)


async def list_models() -> dict[str, Any]:
    """Any model name is accepted; this one is listed so clients that check find one."""
    model = {"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "auditq"}
    return {"object": "list", "data": [model]}


async def health() -> dict[str, str]:
    return {"status": "ok", "results": "synthetic"}


async def set_script(script: Script, request: Request) -> dict[str, int]:
    """Replace a script: the next requests get these outcomes before random faults apply."""
    state = _state(request)
    if script.subject is None:
        state.script = deque(script.faults)
        return {"queued": len(state.script)}
    state.subject_scripts[script.subject] = deque(script.faults)
    return {"queued": len(script.faults)}


async def set_caching(caching: Caching, request: Request) -> None:
    """Report this share of the next prompts' tokens as cached, until the next reset."""
    _state(request).cached_share = caching.cached_share


async def set_latency(latency: Latency, request: Request) -> None:
    """Answer after this long, until the next reset."""
    _state(request).latency_ms = (latency.min_ms, latency.max_ms)


async def recorded_requests(request: Request) -> dict[str, list[Any]]:
    state = _state(request)
    return {"requests": list(state.received), "received_at": list(state.received_at)}


async def stats(request: Request) -> dict[str, Any]:
    outcomes = _state(request).outcomes
    return {"requests": outcomes.total(), "outcomes": dict(outcomes)}


async def reset(request: Request) -> None:
    _state(request).reset()


async def _hang(request: Request, seconds: float) -> Response:
    """Answer nothing until the client gives up (or `seconds` pass), as a stuck model does."""
    try:
        async with asyncio.timeout(seconds):
            while (await request.receive())["type"] != "http.disconnect":
                pass
    except TimeoutError:
        pass
    return _error_response(504, None, "The simulated model hung.")


def _status_fault(kind: str, *, retry_after_s: int) -> Response:
    status, code, message = _STATUS_FAULTS[kind]
    response = _error_response(status, code, message)
    if status == 429:
        response.headers["retry-after"] = str(retry_after_s)
    return response


def _error_response(status: int, code: str | None, message: str) -> JSONResponse:
    error = {"message": message, "type": "simulated_error", "param": None, "code": code}
    return JSONResponse({"error": error}, status_code=status, headers=_request_id_header())


def _request_id_header() -> dict[str, str]:
    return {"x-request-id": f"sim-{uuid.uuid4()}"}


@dataclass(frozen=True)
class _AuditRequest:
    data: AuditData
    criterion_ids: list[str]
    seed: bytes


def _audit_request(body: Any) -> _AuditRequest | None:
    """What the request asks to audit, or None when it is not an auditq request."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return None
    data = find_audit_data(body["messages"])
    ids = _schema_criterion_ids(body)
    if data is None or ids is None:
        return None
    # Same request, same answer: the seed is a hash of the whole body, keys sorted.
    seed = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).digest()
    return _AuditRequest(data=data, criterion_ids=ids, seed=seed)


def _schema_criterion_ids(body: dict[str, Any]) -> list[str] | None:
    path = ("response_format", "json_schema", "schema", "properties", "findings", "items")
    node: Any = body
    for key in (*path, "properties", "criterion_id", "enum"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, list) or not node or not all(isinstance(i, str) for i in node):
        return None
    return node


def _completion_response(
    body: dict[str, Any], audit: _AuditRequest, outcome: str, *, cached_share: float
) -> Response:
    answer = synthetic_answer(audit.data, audit.criterion_ids, seed=audit.seed)
    message, finish_reason = _reply_message(answer, outcome)
    completion = {
        "id": f"chatcmpl-sim-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(body.get("model", MODEL_ID)),
        "system_fingerprint": "auditq-simulator",
        "choices": [
            {"index": 0, "message": message, "finish_reason": finish_reason, "logprobs": None}
        ],
        "usage": _usage(body, message, cached_share=cached_share),
    }
    return JSONResponse(completion, headers=_request_id_header())


def _reply_message(answer: dict[str, Any], outcome: str) -> tuple[dict[str, Any], str]:
    """The assistant message and finish reason for a reply that reached the client."""
    text = json.dumps(answer, ensure_ascii=False)
    content: str | None = text
    refusal: str | None = None
    finish_reason = "stop"
    if outcome == "malformed":
        content = "Here are the findings: " + text[: len(text) // 2]
    elif outcome == "truncated":
        content, finish_reason = text[: len(text) // 2], "length"
    elif outcome == "refusal":
        content, refusal = None, "I'm sorry, but I can't help with that request."
    elif outcome == "content_filter":
        content, finish_reason = None, "content_filter"
    elif outcome == "wrong_ids":
        content = json.dumps(_with_unknown_id(answer), ensure_ascii=False)
    elif outcome == "hostile":
        content = json.dumps(_hostile(answer), ensure_ascii=False)
    elif outcome == "contradiction":
        content = json.dumps(_contradicting(answer), ensure_ascii=False)
    message = {"role": "assistant", "content": content, "refusal": refusal}
    return message, finish_reason


def _with_unknown_id(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer with its last criterion id replaced: one id missing, one unknown."""
    findings = [
        *answer["findings"][:-1],
        {**answer["findings"][-1], "criterion_id": UNKNOWN_CRITERION_ID},
    ]
    return {**answer, "findings": findings}


def _hostile(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer made hostile: huge quotes that miss, and one huge rationale."""
    findings = [{**f, "evidence": [_HOSTILE_QUOTE] * _HOSTILE_QUOTES} for f in answer["findings"]]
    findings[0] = {**findings[0], "rationale": "a" * _HOSTILE_RATIONALE_CHARS}
    return {**answer, "findings": findings}


def _contradicting(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer with its first finding failed at a perfect score, as issue 14's probe."""
    findings = [{**answer["findings"][0], "verdict": "fail", "score": 100}, *answer["findings"][1:]]
    return {**answer, "findings": findings}


def _usage(body: dict[str, Any], message: dict[str, Any], *, cached_share: float) -> dict[str, Any]:
    """Tokens estimated at four characters each, as a rule of thumb for English text; a
    share of the prompt's reported as cached, as OpenAI reports its prompt caching."""
    prompt = _estimate_tokens(json.dumps(body.get("messages", []), ensure_ascii=False))
    completion = _estimate_tokens(message["content"] or message["refusal"] or "")
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": int(prompt * cached_share)},
    }


def _estimate_tokens(text: str) -> int:
    return max(1, -(-len(text) // 4))


def synthetic_answer(data: AuditData, criterion_ids: list[str], *, seed: bytes) -> dict[str, Any]:
    """A reply that follows the reply schema, the same for the same seed."""
    rng = random.Random(seed)
    findings = [
        _synthetic_finding(rng, criterion_id, data.content) for criterion_id in criterion_ids
    ]
    verdicts = Counter(f["verdict"] for f in findings)
    tally = ", ".join(f"{n} {verdict}" for verdict, n in sorted(verdicts.items()))
    summary = (
        f"Simulated audit of {data.subject!r} against {len(findings)} criteria ({tally}). "
        "These results are synthetic, produced by the auditq simulator, not by a model."
    )
    return {"findings": findings, "summary": summary}


def _synthetic_finding(rng: random.Random, criterion_id: str, content: str) -> dict[str, Any]:
    verdict = rng.choices(VERDICTS, weights=_VERDICT_WEIGHTS)[0]
    low, high = _SCORE_RANGES[verdict]
    quote_count = 0 if verdict == "not_applicable" else rng.randint(1, 2)
    quotes = [_quote(rng, content) for _ in range(quote_count)]
    return {
        "criterion_id": criterion_id,
        "verdict": verdict,
        "score": rng.randint(low, high),
        "rationale": f"Simulated judgement: the content {_VERDICT_PHRASES[verdict]} "
        f"criterion {criterion_id!r}.",
        "evidence": [quote for quote in quotes if quote],
    }


def _quote(rng: random.Random, content: str) -> str:
    """A passage of a few words of the content, cut at spaces where there are some."""
    if not content:
        return ""
    start = content.rfind(" ", 0, rng.randrange(len(content))) + 1
    end = content.find(" ", start + rng.randint(20, 80))
    if end < 0 or end - start > _MAX_QUOTE_CHARS:
        end = min(start + _MAX_QUOTE_CHARS, len(content))
    return content[start:end].strip()


if __name__ == "__main__":
    typer.run(command)
