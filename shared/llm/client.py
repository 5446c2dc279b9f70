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

The call is the SDK's typed `chat.completions.create`. A shortcut through its `post`,
with the body as JSON and the reply read by a small model of our own, saved a fraction of
a millisecond of CPU per call (bench/RESULTS.md, section 7) on a call that waits seconds
for the model: not worth a private copy of the response model. The SDK builds the
`ChatCompletion` without validating it (providers' variations must not break the client),
so the few fields read here are checked here (`_reply_of`).

Requests go through the SDK's aiohttp transport (`DefaultAioHttpClient`, the
`openai[aiohttp]` extra) rather than its default HTTP stack, which scans every idle
pooled connection with two system calls as each request starts and ends: with a
hundred calls in flight that was half the worker's CPU per audit, and aiohttp's pool
costs about half as much per call (bench/RESULTS.md). Proxies from the environment,
certificates and timeouts are honoured as before; `shared.llm.errors.classify` corrects
the one error the transport mislabels.
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import openai
from openai import AsyncOpenAI, DefaultAioHttpClient
from openai.types import CompletionUsage
from openai.types.chat import ChatCompletion, ChatCompletionMessage, ChatCompletionMessageParam
from openai.types.chat.chat_completion import Choice
from openai.types.shared_params import ResponseFormatJSONSchema

from shared.config import Settings
from shared.llm.errors import InvalidModelOutput, ModelError, classify, reply_error
from shared.llm.prompt import PROMPT_VERSION, build_messages, correction_message, response_format
from shared.llm.schemas import CriterionText, ModelOutcome, validate_reply

# OpenAI-compatible servers run locally (vLLM, Ollama, the simulator) need no key,
# but the SDK refuses to start without one.
PLACEHOLDER_API_KEY = "no-key-configured"


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
) -> ModelOutcome:
    """Ask the model to judge `content` against `criteria`; raises `ModelError`."""
    messages = build_messages(subject=subject, content=content, criteria=criteria)
    schema = response_format([c.id for c in criteria])
    first = await _ask(client, model=model, messages=messages, schema=schema)
    try:
        return _outcome(first, criteria=criteria, content=content)
    except InvalidModelOutput as invalid:
        retry = [*messages, correction_message(invalid.reason)]
        try:
            second = await _ask(client, model=model, messages=retry, schema=schema)
        except ModelError as error:
            raise error.charged(first.prompt_tokens, first.completion_tokens) from None
        return _outcome(second.after(first), criteria=criteria, content=content)


async def _ask(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
) -> _Reply:
    try:
        completion: object = await client.chat.completions.create(
            model=model, messages=messages, response_format=schema
        )
    except openai.OpenAIError as exc:
        raise classify(exc) from exc
    except ValueError:
        # A body the provider labelled JSON that is not: the SDK's `json.loads` raised.
        raise _malformed() from None
    return _reply_of(completion)


def _reply_of(completion: object) -> _Reply:
    """The reply, or the error it stands for: refused or unfinished (permanent), malformed.

    The SDK hands back the body's text when it is not JSON, and builds a completion of the
    wrong shape as it came; either is the provider's malformed answer (transient).
    """
    if not isinstance(completion, ChatCompletion) or not isinstance(completion.choices, list):
        raise _malformed()
    prompt_tokens, completion_tokens = _tokens(completion.usage)
    if not completion.choices:
        return _Reply(None, prompt_tokens, completion_tokens, completion._request_id)
    choice = completion.choices[0]
    message = choice.message if isinstance(choice, Choice) else None
    if not isinstance(message, ChatCompletionMessage) or not all(
        value is None or isinstance(value, str)
        for value in (message.content, message.refusal, choice.finish_reason)
    ):
        raise _malformed()
    error = reply_error(finish_reason=choice.finish_reason, refusal=message.refusal)
    if error is not None:
        raise error.charged(prompt_tokens, completion_tokens)
    return _Reply(message.content, prompt_tokens, completion_tokens, completion._request_id)


def _tokens(usage: object) -> tuple[int, int]:
    """(prompt, completion) tokens; a provider that sends no usage is counted as zero."""
    if usage is None:
        return 0, 0
    if not isinstance(usage, CompletionUsage):
        raise _malformed()
    counts = (usage.prompt_tokens or 0, usage.completion_tokens or 0)
    if not all(type(n) is int and n >= 0 for n in counts):
        raise _malformed()
    return counts


def _malformed() -> ModelError:
    return ModelError(
        "model_server_error", "the provider answered with a malformed response", transient=True
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
