"""The one way auditq calls a model: `create_client` once per process, `audit_content` per audit.

The SDK's own retries are off (`max_retries=0`). A failed call surfaces at once as a
`ModelError`; the worker retries transient ones through arq `Retry(defer=...)`, honouring
`retry_after`, so no worker slot is held while a rate limit or an outage passes, and
`MAX_ATTEMPTS` counts every attempt. Retrying inside the SDK as well would multiply the
attempts and sleep inside the job.

An invalid reply is the one thing retried here, once, with a note on what was wrong:
that is part of getting one answer, not a new attempt at the audit. Each rejected reply
is logged with what was wrong with it (`model_reply_invalid`, `kind`: shared/llm/errors.py).

Temperature and seed are sent as configured, and given up for a model that refuses them
(shared/llm/sampling.py). Output limits are left to the provider: a cap on output tokens
would truncate audits with many criteria.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace

import httpx2
import openai
import structlog
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types.chat import ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema
from pydantic import BaseModel, NonNegativeInt, ValidationError

from shared import tracing
from shared.config import Settings
from shared.llm.errors import (
    InvalidKind,
    InvalidModelOutput,
    ModelError,
    classify,
    refused_parameter,
    reply_error,
)
from shared.llm.prompt import (
    PROMPT_VERSION,
    build_messages,
    correction_message,
    response_format,
    schema_sha256,
)
from shared.llm.sampling import Sampling
from shared.llm.schemas import CriterionText, ModelOutcome, validate_reply
from shared.llm.usage import NO_USAGE, ReplyTokens, TokenUsage

log = structlog.get_logger(__name__)

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


# Told the kind of each reply rejected as invalid (shared/llm/errors.py, `InvalidKind`).
InvalidObserver = Callable[[InvalidKind], None]


def _unnoticed(kind: InvalidKind) -> None:
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
    usage: TokenUsage
    request_id: str | None
    served_model: str | None
    sampled: Mapping[str, float | int]  # the sampling parameters the call was sent with
    rejected: tuple[InvalidKind, ...] = ()

    def after(self, rejected: "_Reply", kind: InvalidKind) -> "_Reply":
        """This reply, also counting the call and the tokens spent on a rejected one before it
        (of `kind`)."""
        return replace(self, usage=rejected.usage + self.usage, rejected=(*rejected.rejected, kind))


async def audit_content(
    client: AsyncOpenAI,
    *,
    model: str,
    subject: str,
    content: str,
    criteria: Sequence[CriterionText],
    sampling: Sampling,
    observe: RequestObserver = _unobserved,
    on_invalid: InvalidObserver = _unnoticed,
) -> ModelOutcome:
    """Ask the model to judge `content` against `criteria`; raises `ModelError`.

    `observe` is told of each request as it ends, `on_invalid` of each reply rejected.
    """
    messages = build_messages(subject=subject, content=content, criteria=criteria)
    schema = response_format([c.id for c in criteria])
    first = await _ask_sampled(
        client, model=model, messages=messages, schema=schema, sampling=sampling, observe=observe
    )
    try:
        return _outcome(first, schema=schema, criteria=criteria, content=content)
    except InvalidModelOutput as invalid:
        _rejected(invalid, corrective_call=True, on_invalid=on_invalid)
        retry = [*messages, correction_message(invalid.reason)]
        try:
            second = await _ask_sampled(
                client,
                model=model,
                messages=retry,
                schema=schema,
                sampling=sampling,
                observe=observe,
            )
        except ModelError as error:
            raise error.charged(first.usage) from None
        corrected = second.after(first, invalid.kind)
        try:
            return _outcome(corrected, schema=schema, criteria=criteria, content=content)
        except InvalidModelOutput as again:  # the audit fails with it
            _rejected(again, corrective_call=False, on_invalid=on_invalid)
            raise


def _rejected(
    invalid: InvalidModelOutput, *, corrective_call: bool, on_invalid: InvalidObserver
) -> None:
    log.info("model_reply_invalid", kind=invalid.kind, corrective_call=corrective_call)
    on_invalid(invalid.kind)


async def _ask_sampled(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
    sampling: Sampling,
    observe: RequestObserver = _unobserved,
) -> _Reply:
    """`_ask` with the sampling parameters; one the model refuses is given up, the call made
    again without it (bounded: one parameter fewer each time)."""
    while True:
        sampled = sampling.parameters(model)
        try:
            return await _ask(
                client,
                model=model,
                messages=messages,
                schema=schema,
                sampled=sampled,
                observe=observe,
            )
        except _ParameterRefused as refused:
            sampling.refuse(model, refused.name)


async def _ask(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
    sampled: Mapping[str, float | int],
    observe: RequestObserver = _unobserved,
) -> _Reply:
    started = time.perf_counter()
    try:
        reply = await _traced_call(
            client, model=model, messages=messages, schema=schema, sampled=sampled
        )
    except ModelError as error:
        # The error's usage is this request's alone: an earlier request's is added later.
        _observe(observe, model, error.code, started, error.usage or NO_USAGE)
        raise
    _observe(observe, model, REQUEST_OK, started, reply.usage)
    return reply


def _observe(
    observe: RequestObserver, model: str, outcome: str, started: float, usage: TokenUsage
) -> None:
    seconds = time.perf_counter() - started
    observe(ModelRequest(model, outcome, seconds, usage.prompt_tokens, usage.completion_tokens))


async def _traced_call(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
    sampled: Mapping[str, float | int],
) -> _Reply:
    with tracing.model_call_span(model) as span:
        for name, value in sampled.items():  # GenAI conventions: gen_ai.request.temperature
            span.set_attribute(f"gen_ai.request.{name}", value)
        completion, request_id = await _chat_completion(
            client,
            {"model": model, "messages": messages, "response_format": schema, **sampled},
            sampled=sampled,
        )
        usage = completion.usage or _Usage()
        tracing.model_answered(
            span,
            response_model=completion.model,
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            finish_reason=completion.choices[0].finish_reason if completion.choices else None,
        )
    return _reply_of(completion, request_id, sampled=sampled)


class _ParameterRefused(Exception):
    """The model refused a sampling parameter it was sent (shared/llm/sampling.py)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


class _Message(BaseModel):
    content: str | None = None
    refusal: str | None = None


class _Choice(BaseModel):
    finish_reason: str | None = None
    message: _Message


class _PromptTokensDetails(BaseModel):
    cached_tokens: NonNegativeInt | None = 0


class _Usage(BaseModel):
    prompt_tokens: NonNegativeInt = 0
    completion_tokens: NonNegativeInt = 0
    # Where the provider reports prompt caching; the cached tokens are part of the prompt's.
    prompt_tokens_details: _PromptTokensDetails | None = None

    def tokens(self) -> TokenUsage:
        details = self.prompt_tokens_details
        cached = min(details.cached_tokens or 0, self.prompt_tokens) if details else 0
        return TokenUsage((ReplyTokens(self.prompt_tokens, self.completion_tokens, cached),))


class _Completion(BaseModel):
    """What `_chat_completion` reads of a Chat Completions response; the rest is ignored."""

    choices: list[_Choice] = []
    usage: _Usage | None = None
    model: str | None = None  # the model that answered: for traces and the provenance


async def _chat_completion(
    client: AsyncOpenAI, body: dict[str, object], *, sampled: Mapping[str, object]
) -> tuple[_Completion, str | None]:
    """POST /chat/completions: the parts of the reply auditq reads, and the `x-request-id`.

    The SDK's `post` with the body as the API takes it, instead of its typed
    `chat.completions.create`, which walks the request through its TypedDict transforms
    and builds a whole `ChatCompletion` without validating it. Measured both ways against
    the simulator (bench/RESULTS.md, section 8), `create` cost 0.7-1.0 ms more CPU per call
    (about twice this call's), and one worker at a fixed 500 ms did 93-94 audits/s with it
    against 119-132 with this, on a busy 2-core machine. Errors, timeouts, headers, the
    transport and the settings stay the SDK's.

    Raises `_ParameterRefused` when a 400 names one of the `sampled` parameters.
    """
    try:
        response = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
    except openai.APIStatusError as exc:
        if (name := refused_parameter(exc, sampled)) is not None:
            raise _ParameterRefused(name) from exc
        raise classify(exc) from exc
    except openai.OpenAIError as exc:
        raise classify(exc) from exc
    try:
        completion = _Completion.model_validate_json(response.content)
    except ValidationError:
        raise ModelError(
            "model_server_error", "the provider answered with a malformed response", transient=True
        ) from None
    return completion, response.headers.get("x-request-id")


def _reply_of(
    completion: _Completion, request_id: str | None, *, sampled: Mapping[str, float | int]
) -> _Reply:
    """The reply, or the permanent error a refusal or an unfinished reply stands for."""
    choice = completion.choices[0] if completion.choices else None
    usage = (completion.usage or _Usage()).tokens()
    if choice is not None:
        error = reply_error(finish_reason=choice.finish_reason, refusal=choice.message.refusal)
        if error is not None:
            raise error.charged(usage)
    return _Reply(
        text=choice.message.content if choice else None,
        usage=usage,
        request_id=request_id,
        served_model=completion.model,
        sampled=sampled,
    )


def _outcome(
    reply: _Reply,
    *,
    schema: ResponseFormatJSONSchema,
    criteria: Sequence[CriterionText],
    content: str,
) -> ModelOutcome:
    try:
        if reply.text is None:
            raise InvalidModelOutput("the reply has no content", kind="empty")
        findings, summary, dropped = validate_reply(reply.text, criteria=criteria, content=content)
    except InvalidModelOutput as invalid:
        invalid.rejected = (*reply.rejected, invalid.kind)
        raise invalid.charged(reply.usage) from None
    temperature, seed = reply.sampled.get("temperature"), reply.sampled.get("seed")
    return ModelOutcome(
        findings=findings,
        summary=summary,
        dropped_quotes=dropped,
        usage=reply.usage,
        request_id=reply.request_id,
        prompt_version=PROMPT_VERSION,
        served_model=reply.served_model,
        schema_sha256=schema_sha256(schema),
        temperature=None if temperature is None else float(temperature),
        seed=None if seed is None else int(seed),
        invalid_replies=reply.rejected,
    )
