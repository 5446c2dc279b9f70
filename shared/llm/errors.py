"""Errors of a model call, sorted into what a later attempt may fix and what it cannot.

Every failure of a model call leaves `shared.llm` as a `ModelError`: a stable snake_case
`code` that ends up in `audit.error_code`, a human-readable `message`, `transient` (the
worker retries transient errors with backoff, fails the audit at once on permanent ones)
and `retry_after`, the provider's `Retry-After` in seconds.

Messages are written here, never copied from the provider: a provider's error text can
echo the request (the content) or part of the API key, and `message` is shown to clients.
The SDK exception stays available as `__cause__` for operators.
"""

import email.utils
import math
import re
import time
from collections.abc import Iterable, Mapping
from typing import Literal, Self, get_args

import aiohttp
import openai

from shared.llm.usage import TokenUsage

__all__ = [
    "INVALID_KINDS",
    "InvalidKind",
    "InvalidModelOutput",
    "ModelError",
    "classify",
    "refused_parameter",
    "reply_error",
    "retry_after_seconds",
]


class ModelError(Exception):
    """A model call that failed; `transient` says whether a later attempt may succeed."""

    def __init__(
        self, code: str, message: str, *, transient: bool, retry_after: float | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        # The tokens of the attempt's calls that were answered; None: none was.
        self.usage: TokenUsage | None = None

    def charged(self, usage: TokenUsage) -> Self:
        """This error, counting the answered calls of its attempt (paid for all the same)."""
        self.usage = usage if self.usage is None else self.usage + usage
        return self


# What was wrong with an invalid reply, as logs and metrics count it:
# - `empty`: no content at all;
# - `not_json`: not a JSON document;
# - `shape`: JSON, but not the reply schema's shape (a key missing, a score out of range);
# - `criterion_ids`: a criterion missing, repeated or unknown;
# - `bounds`: beyond a bound of the reply (its length, a rationale's, a quote's, the quotes'
#   count; shared/llm/schemas.py);
# - `contradiction`: a finding whose verdict contradicts its score (`SCORE_BANDS`).
InvalidKind = Literal["empty", "not_json", "shape", "criterion_ids", "bounds", "contradiction"]
INVALID_KINDS: tuple[str, ...] = get_args(InvalidKind)


class InvalidModelOutput(ModelError):
    """The model answered, but not with what the reply schema and the criteria demand."""

    def __init__(self, reason: str, *, kind: InvalidKind) -> None:
        message = f"the model's reply was invalid: {reason}"
        super().__init__("invalid_model_output", message, transient=False)
        self.reason = reason
        self.kind = kind
        # The kinds of every reply of the attempt's model call that was rejected, this one
        # last: a corrected reply's too, once the corrective call failed as well.
        self.rejected: tuple[InvalidKind, ...] = (kind,)


def _output_truncated() -> ModelError:
    return ModelError(
        "output_truncated",
        "the reply hit the model's output token limit before it was complete",
        transient=False,
    )


def _content_filtered() -> ModelError:
    return ModelError(
        "content_filtered", "the provider's content filter blocked the reply", transient=False
    )


_FINISH_REASON_ERRORS = {"length": _output_truncated, "content_filter": _content_filtered}

# status -> (code, message, transient). 408 and 409 are retried, as the SDK itself would.
_STATUS_ERRORS: dict[int, tuple[str, str, bool]] = {
    400: ("model_bad_request", "the provider rejected the request as invalid", False),
    401: ("model_auth_failed", "the provider rejected the API key (OPENAI_API_KEY)", False),
    403: ("model_permission_denied", "the API key may not use this model or endpoint", False),
    404: ("model_not_found", "the provider does not know this model or endpoint", False),
    408: ("model_timeout", "the provider timed out", True),
    409: ("model_unavailable", "the provider reported a conflict; try again", True),
    422: ("model_bad_request", "the provider could not process the request", False),
    429: ("model_rate_limited", "the provider's rate limit was reached", True),
    503: ("model_unavailable", "the provider is overloaded or unavailable", True),
}
_SERVER_ERROR = ("model_server_error", "the provider failed with a server error", True)
_CLIENT_ERROR = ("model_bad_request", "the provider refused the request", False)

# OpenAI says `context_length_exceeded` in `code`; vLLM, llama.cpp and others only in the text.
_CONTEXT_LENGTH = re.compile(
    r"context[ _-]?(length|window)|maximum context|too many tokens|prompt is too long", re.I
)
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


def classify(exc: Exception) -> ModelError:
    """The `ModelError` an exception raised by the openai SDK stands for."""
    if isinstance(exc, ModelError):
        return exc
    # Before APIConnectionError, its base class.
    if isinstance(exc, openai.APITimeoutError) and not _failed_without_timing_out(exc):
        return ModelError(
            "model_timeout", "the model did not answer within OPENAI_TIMEOUT_S", transient=True
        )
    if isinstance(exc, openai.APIConnectionError):
        return ModelError(
            "model_unavailable",
            f"could not reach the model provider at {_provider_host(exc)}",
            transient=True,
        )
    if isinstance(exc, openai.APIStatusError):
        return _from_status_error(exc)
    if isinstance(exc, openai.APIResponseValidationError):
        return ModelError(
            "model_server_error", "the provider answered with a malformed response", transient=True
        )
    if isinstance(exc, openai.LengthFinishReasonError):
        return _FINISH_REASON_ERRORS["length"]()
    if isinstance(exc, openai.ContentFilterFinishReasonError):
        return _FINISH_REASON_ERRORS["content_filter"]()
    # Anything else is a bug or a misconfiguration on our side: retrying will not help.
    return ModelError(
        "model_client_error", f"the model call failed with {type(exc).__name__}", transient=False
    )


def _provider_host(exc: openai.APIConnectionError) -> str:
    """`host[:port]` of the URL the call went to: the first thing to check in OPENAI_BASE_URL."""
    url = exc.request.url
    return f"{url.host}:{url.port}" if url.port else str(url.host)


def _failed_without_timing_out(exc: openai.APITimeoutError) -> bool:
    """A connection that failed at once, which the SDK's aiohttp transport calls a timeout.

    That transport maps every aiohttp connection error, a refused connection included,
    to a connect timeout; the aiohttp error and what it came from follow in the chain.
    """
    chain: list[BaseException] = []
    cause: BaseException | None = exc
    while cause is not None:
        chain.append(cause)
        cause = cause.__cause__
    failed = any(isinstance(error, aiohttp.ClientConnectionError) for error in chain)
    return failed and not any(isinstance(error, TimeoutError) for error in chain)


def reply_error(*, finish_reason: str | None, refusal: str | None) -> ModelError | None:
    """The permanent error a completed reply stands for, or None when it can be used."""
    if refusal:
        # The refusal text is left out: it may quote the content.
        return ModelError(
            "model_refused", "the model refused to audit the content", transient=False
        )
    make_error = _FINISH_REASON_ERRORS.get(finish_reason or "")
    return make_error() if make_error else None


def _from_status_error(exc: openai.APIStatusError) -> ModelError:
    code, message, transient = _status_meaning(exc)
    return ModelError(
        code,
        f"{message} ({_provider_details(exc)})",
        transient=transient,
        retry_after=retry_after_seconds(exc.response.headers),
    )


def _status_meaning(exc: openai.APIStatusError) -> tuple[str, str, bool]:
    status = exc.status_code
    if status == 400 and _is_context_length(exc):
        return ("context_length_exceeded", "the content is too long for the model", False)
    if status == 429 and exc.code == "insufficient_quota":
        # OpenAI's 429 for an exhausted budget: waiting does not refill it.
        return ("model_quota_exceeded", "the provider account has no quota left", False)
    if status in _STATUS_ERRORS:
        return _STATUS_ERRORS[status]
    return _SERVER_ERROR if status >= 500 else _CLIENT_ERROR


def _is_context_length(exc: openai.APIStatusError) -> bool:
    return exc.code == "context_length_exceeded" or bool(_CONTEXT_LENGTH.search(exc.message))


def _provider_details(exc: openai.APIStatusError) -> str:
    """HTTP status, provider error code and request id: enough to trace, nothing echoed."""
    details = [f"HTTP {exc.status_code}"]
    if exc.code and _IDENTIFIER.match(exc.code):
        details.append(f"provider code {exc.code}")
    if exc.request_id and _IDENTIFIER.match(exc.request_id):
        details.append(f"request id {exc.request_id}")
    return ", ".join(details)


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """Seconds the provider asks us to wait: `retry-after-ms`, or `Retry-After` (seconds or date).

    `headers` must look names up case-insensitively, as httpx's do.
    """
    milliseconds = _non_negative_float(headers.get("retry-after-ms"))
    if milliseconds is not None:
        return milliseconds / 1000
    value = headers.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    return seconds if seconds is not None else _seconds_until_http_date(value)


def _non_negative_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def _seconds_until_http_date(value: str) -> float | None:
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    try:
        moment = email.utils.mktime_tz(parsed)
    except (OverflowError, ValueError):
        return None
    # A date already past means "now", not "no advice".
    return max(0.0, moment - time.time())


def refused_parameter(exc: openai.APIStatusError, sent: Iterable[str]) -> str | None:
    """The sampling parameter a 400 refuses, if it names one of those `sent`.

    OpenAI names it in `param` (`temperature` for its reasoning models); servers that do
    not fill `param` (vLLM, llama.cpp) name it in a message that says it is refused. A
    message that merely mentions it, as one quoting the request does, is not a refusal.
    """
    if exc.status_code not in (400, 422):
        return None
    names = list(sent)
    if exc.param in names:
        return str(exc.param)
    if not _REFUSAL_WORDS.search(exc.message):
        return None
    return next((name for name in names if re.search(rf"\b{name}\b", exc.message, re.I)), None)


_REFUSAL_WORDS = re.compile(
    r"unsupported|not supported|does not support|doesn't support|not allowed|invalid|unknown",
    re.I,
)
