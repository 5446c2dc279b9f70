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
"""

from collections.abc import Sequence
from dataclasses import dataclass, replace

import openai
from openai import AsyncOpenAI
from openai.types.chat import ChatCompletion, ChatCompletionMessageParam
from openai.types.shared_params import ResponseFormatJSONSchema

from shared.audits.schemas import Criterion
from shared.config import Settings
from shared.llm.errors import InvalidModelOutput, classify, reply_error
from shared.llm.prompt import PROMPT_VERSION, build_messages, correction_message, response_format
from shared.llm.schemas import ModelOutcome, validate_reply

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
    criteria: Sequence[Criterion],
) -> ModelOutcome:
    """Ask the model to judge `content` against `criteria`; raises `ModelError`."""
    messages = build_messages(subject=subject, content=content, criteria=criteria)
    schema = response_format([c.id for c in criteria])
    first = await _ask(client, model=model, messages=messages, schema=schema)
    try:
        return _outcome(first, criteria=criteria, content=content)
    except InvalidModelOutput as invalid:
        retry = [*messages, correction_message(invalid.reason)]
        second = await _ask(client, model=model, messages=retry, schema=schema)
        return _outcome(second.after(first), criteria=criteria, content=content)


async def _ask(
    client: AsyncOpenAI,
    *,
    model: str,
    messages: list[ChatCompletionMessageParam],
    schema: ResponseFormatJSONSchema,
) -> _Reply:
    try:
        completion = await client.chat.completions.create(
            model=model, messages=messages, response_format=schema
        )
    except openai.OpenAIError as exc:
        raise classify(exc) from exc
    return _reply_of(completion)


def _reply_of(completion: ChatCompletion) -> _Reply:
    """The reply, or the permanent error a refusal or an unfinished reply stands for."""
    choice = completion.choices[0] if completion.choices else None
    if choice is not None:
        error = reply_error(finish_reason=choice.finish_reason, refusal=choice.message.refusal)
        if error is not None:
            raise error
    usage = completion.usage
    return _Reply(
        text=choice.message.content if choice else None,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        request_id=completion._request_id,
    )


def _outcome(reply: _Reply, *, criteria: Sequence[Criterion], content: str) -> ModelOutcome:
    if reply.text is None:
        raise InvalidModelOutput("the reply has no content")
    findings, summary, dropped = validate_reply(reply.text, criteria=criteria, content=content)
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
