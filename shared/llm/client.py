"""The one way auditq calls a model: `create_client` once per process, `audit_content` per audit.

The SDK's own retries are off (`max_retries=0`). A failed call surfaces at once as a
`ModelError`; the worker retries transient ones through arq `Retry(defer=...)`, honouring
`retry_after`, so no worker slot is held while a rate limit or an outage passes, and
`MAX_ATTEMPTS` counts every attempt. Retrying inside the SDK as well would multiply the
attempts and sleep inside the job.

An invalid reply is the one thing retried here, once, with a note on what was wrong:
that is part of getting one answer, not a new attempt at the audit.

Temperature and output limits are left to the provider: reasoning models reject
`temperature`, and a cap on output tokens would truncate audits with many criteria.

The request goes through the SDK's `post` rather than its typed `chat.completions.create`,
in one function, `_chat_completion`, where the measurement that keeps it is given.

Requests go through the SDK's aiohttp transport (`DefaultAioHttpClient`, the
`openai[aiohttp]` extra) rather than its default HTTP stack, which scans every idle
pooled connection with two system calls as each request starts and ends: with a
hundred calls in flight that was half the worker's CPU per audit, and aiohttp's pool
costs about half as much per call (bench/RESULTS.md). Proxies from the environment,
certificates and timeouts are honoured as before; `shared.llm.errors.classify` corrects
the one error the transport mislabels.

Each request is told, as it ends, to the `observe` callback a caller may give
(`ModelRequest`: the worker's metrics): how long it took, its outcome and the tokens the
provider reported for it. The outcome is `ok` when the provider answered with a reply
auditq can read, else the code of the `ModelError` the request ended with
(`model_timeout`, `model_rate_limited`, `model_refused`, …): the codes are few and fixed,
so they make a label, and they say more than an HTTP status class. A readable reply
whose findings break the schema is still `ok` here: the request did its part, and the
audit's `invalid_model_output` is told where the audit ends.
"""

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import httpx2
import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, NonNegativeInt, ValidationError

from shared import tracing
from shared.config import Settings
from shared.llm.errors import InvalidModelOutput, ModelError, classify, reply_error
from shared.llm.prompt import PROMPT_VERSION, build_messages, correction_message, response_format
from shared.llm.schemas import CriterionText, ModelOutcome, validate_reply

# OpenAI-compatible servers run locally (vLLM, Ollama, the simulator) need no key,
# but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "no-key-configured"
REQUEST_OK = "ok"


@dataclass(frozen=True, slots=True)
class ModelRequest:
    """One request to the model, as it ended."""

    model: str
    outcome: str  # `REQUEST_OK`, or the code of the `ModelError` it ended with
    seconds: float
    prompt_tokens: int
    completion_tokens: int


RequestObserver = Callable[[ModelRequest], None]


def _unobserved(request: ModelRequest) -> None:
    pass


def create_client(settings: Settings) -> AsyncOpenAI:
    """The process's client; close it with `await client.close()` on shutdown."""
    return AsyncOpenAI(
        api_key=settings.openai_api_key or PLACEHOLDER_API_KEY,
        base_url=settings.openai_base_url,
        timeout=settings.openai_timeout_s,
        max_retries=0,
        http_client=DefaultAioHttpClient(),
    )


@dataclass(frozen=True)
class _Reply:
    text: str | None
    prompt_tokens: int
    completion_tokens: int
    request_id: str | None
    calls: int = 1

    def after(self, rejected: "_Reply") -> "_Reply":
        """This reply, also counting the call and the tokens spent on a rejected one before it."""
        return replace(
            self,
            prompt_tokens=rejected.prompt_tokens + self.prompt_tokens,
            completion_tokens=rejected.completion_tokens + self.completion_tokens,
            calls=rejected.calls + self.calls,
        )


async def audit_content(
    client: AsyncOpenAI,
    *,
    model: str,
    subject: str,
    content: str,
    criteria: Sequence[CriterionText],
    observe: RequestObserver = _unobserved,
) -> ModelOutcome:
    """Ask the model to judge `content` against `criteria`; raises `ModelError`.

    `observe` is told of each request as it ends.
    """
    messages = build_messages(subject=subject, content=content, criteria=criteria)
    schema = response_format([c.id for c in criteria])
    first = await _ask(client, model=model, messages=messages, schema=schema, observe=observe)
    try:
        return _outcome(first, criteria=criteria, content=content)
    except InvalidModelOutput as invalid:
        retry = [*messages, correction_message(invalid.reason)]
        try:
            second = await _ask(client, model=model, messages=retry, schema=schema, observe=observe)
        except ModelError as error:
            raise error.charged(first.prompt_tokens, first.completion_tokens) from None
        return _outcome(second.after(first), criteria=criteria, content=content)


async def _ask(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
    observe: RequestObserver = _unobserved,
) -> _Reply:
    started = time.perf_counter()
    try:
        reply = await _traced_call(client, model=model, messages=messages, schema=schema)
    except ModelError as error:
        # The error's usage is this request's alone: an earlier request's is added later.
        tokens = error.usage or (0, 0)
        observe(ModelRequest(model, error.code, time.perf_counter() - started, *tokens))
        raise
    tokens = (reply.prompt_tokens, reply.completion_tokens)
    observe(ModelRequest(model, REQUEST_OK, time.perf_counter() - started, *tokens))
    return reply


async def _traced_call(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
) -> _Reply:
    with tracing.model_call_span(model) as span:
        completion, request_id = await _chat_completion(
            client, {"model": model, "messages": messages, "response_format": schema}
        )
        usage = completion.usage or _Usage()
        tracing.model_answered(
            span,
            response_model=completion.model,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            finish_reason=completion.choices[0].finish_reason if completion.choices else None,
        )
    return _reply_of(completion, request_id)


class _Message(BaseModel):
    content: str | None = None
    refusal: str | None = None


class _Choice(BaseModel):
    finish_reason: str | None = None
    message: _Message


class _Usage(BaseModel):
    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0


class _Completion(BaseModel):
    """What `_chat_completion` reads of a Chat Completions response; the rest is ignored."""

    choices: list[_Choice] = []
    usage: _Usage | None = None
    model: str | None = None  # the model that answered, for traces


async def _chat_completion(
    client: AsyncOpenAI, body: dict[str, object]
) -> tuple[_Completion, str | None]:
    """POST /chat/completions: the parts of the reply auditq reads, and the `x-request-id`.

    The SDK's `post` with the body as the API takes it, instead of its typed
    `chat.completions.create`, which walks the request through its TypedDict transforms
    and builds a whole `ChatCompletion` without validating it. Measured both ways against
    the simulator (bench/RESULTS.md, section 8), `create` cost 0.7-1.0 ms more CPU per call
    (about twice this call's), and one worker at a fixed 500 ms did 93-94 audits/s with it
    against 119-132 with this, on a busy 2-core machine. Errors, timeouts, headers, the
    transport and the settings stay the SDK's.
    """
    try:
        response = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
    except openai.OpenAIError as exc:
        raise classify(exc) from exc
    try:
        completion = _Completion.model_validate_json(response.content)
    except ValidationError:
        raise ModelError(
            "model_server_error", "the provider answered with a malformed response", transient=True
        ) from None
    return completion, response.headers.get("x-request-id")


def _reply_of(completion: _Completion, request_id: str | None) -> _Reply:
    """The reply, or the permanent error a refusal or an unfinished reply stands for."""
    choice = completion.choices[0] if completion.choices else None
    usage = completion.usage or _Usage()
    if choice is not None:
        error = reply_error(finish_reason=choice.finish_reason, refusal=choice.message.refusal)
        if error is not None:
            raise error.charged(usage.prompt_tokens, usage.completion_tokens)
    return _Reply(
        text=choice.message.content if choice else None,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        request_id=request_id,
    )


def _outcome(reply: _Reply, *, criteria: Sequence[CriterionText], content: str) -> ModelOutcome:
    try:
        if reply.text is None:
            raise InvalidModelOutput("the reply has no content")
        findings, summary, dropped = validate_reply(reply.text, criteria=criteria, content=content)
    except InvalidModelOutput as invalid:
        raise invalid.charged(reply.prompt_tokens, reply.completion_tokens) from None
    return ModelOutcome(
        findings=findings,
        summary=summary,
        dropped_quotes=dropped,
        prompt_tokens=reply.prompt_tokens,
        completion_tokens=reply.completion_tokens,
        request_id=reply.request_id,
        prompt_version=PROMPT_VERSION,
        model_calls=reply.calls,
    )
