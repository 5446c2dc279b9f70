import time
from email.utils import formatdate
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletion

from shared.llm.errors import ModelError, classify, reply_error, retry_after_seconds

REQUEST = httpx2.Request("POST", "https://api.example.test/v1/chat/completions")


def status_error(
    status: int,
    *,
    cls: type[openai.APIStatusError] = openai.APIStatusError,
    message: str = "",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> openai.APIStatusError:
    """The exception the SDK raises for an HTTP error answer."""
    response = httpx2.Response(status, headers=headers, request=REQUEST)
    return cls(f"Error code: {status} - {message}", response=response, body=body)


def completion(finish_reason: str) -> ChatCompletion:
    return ChatCompletion.model_validate(
        {
            "id": "c",
            "object": "chat.completion",
            "created": 0,
            "model": "m",
            "choices": [
                {
                    "index": 0,
                    "finish_reason": finish_reason,
                    "message": {"role": "assistant", "content": '{"findings": ['},
                }
            ],
        }
    )


@pytest.mark.parametrize(
    ("error", "code", "transient"),
    [
        (status_error(429, cls=openai.RateLimitError), "model_rate_limited", True),
        (status_error(500, cls=openai.InternalServerError), "model_server_error", True),
        (status_error(502, cls=openai.InternalServerError), "model_server_error", True),
        (status_error(503, cls=openai.InternalServerError), "model_unavailable", True),
        (status_error(529), "model_server_error", True),
        (status_error(408), "model_timeout", True),
        (status_error(409, cls=openai.ConflictError), "model_unavailable", True),
        (status_error(400, cls=openai.BadRequestError), "model_bad_request", False),
        (status_error(401, cls=openai.AuthenticationError), "model_auth_failed", False),
        (status_error(403, cls=openai.PermissionDeniedError), "model_permission_denied", False),
        (status_error(404, cls=openai.NotFoundError), "model_not_found", False),
        (status_error(422, cls=openai.UnprocessableEntityError), "model_bad_request", False),
        (status_error(413), "model_bad_request", False),
        (openai.APITimeoutError(request=REQUEST), "model_timeout", True),
        (openai.APIConnectionError(request=REQUEST), "model_unavailable", True),
        (
            openai.LengthFinishReasonError(completion=completion("length")),
            "output_truncated",
            False,
        ),
        (openai.ContentFilterFinishReasonError(), "content_filtered", False),
        (openai.OpenAIError("Missing credentials."), "model_client_error", False),
        (ValueError("boom"), "model_client_error", False),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, Exception) else str(value),
)
def test_classify_routes_each_kind_of_failure(error: Exception, code: str, transient: bool) -> None:
    classified = classify(error)

    assert (classified.code, classified.transient) == (code, transient)
    assert classified.message


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://api.example.test/v1/chat/completions", "api.example.test"),
        ("http://127.0.0.1:11434/v1/chat/completions", "127.0.0.1:11434"),
    ],
)
def test_an_unreachable_provider_is_named_by_its_host(url: str, host: str) -> None:
    request = httpx2.Request("POST", url)

    message = classify(openai.APIConnectionError(request=request)).message

    assert message == f"could not reach the model provider at {host}"


def test_context_length_is_recognised_by_openai_code() -> None:
    error = status_error(
        400,
        cls=openai.BadRequestError,
        body={"message": "...", "type": "invalid_request_error", "code": "context_length_exceeded"},
    )

    assert classify(error).code == "context_length_exceeded"
    assert classify(error).transient is False


def test_context_length_is_recognised_by_message_of_other_servers() -> None:
    # vLLM puts the HTTP status in `code` and explains in the message only.
    error = status_error(
        400,
        cls=openai.BadRequestError,
        message="This model's maximum context length is 4096 tokens. You requested 9000 tokens.",
        body={"object": "error", "message": "...", "type": "BadRequestError", "code": 400},
    )

    assert classify(error).code == "context_length_exceeded"


def test_an_exhausted_quota_is_not_retried() -> None:
    error = status_error(
        429, cls=openai.RateLimitError, body={"message": "...", "code": "insufficient_quota"}
    )

    assert (classify(error).code, classify(error).transient) == ("model_quota_exceeded", False)


def test_the_provider_message_is_not_copied() -> None:
    error = status_error(
        401,
        cls=openai.AuthenticationError,
        message="Incorrect API key provided: sk-proj-abc***************xyz.",
        body={
            "message": "Incorrect API key provided: sk-proj-abc***xyz.",
            "code": "invalid_api_key",
        },
        headers={"x-request-id": "req_123"},
    )

    classified = classify(error)

    assert "sk-" not in classified.message
    assert classified.message == (
        "the provider rejected the API key (OPENAI_API_KEY) "
        "(HTTP 401, provider code invalid_api_key, request id req_123)"
    )


def test_a_provider_code_that_is_not_an_identifier_is_left_out() -> None:
    error = status_error(400, cls=openai.BadRequestError, body={"code": "the content was: secret"})

    assert "secret" not in classify(error).message


def test_classify_keeps_a_model_error_as_it_is() -> None:
    error = ModelError("model_refused", "no", transient=False)

    assert classify(error) is error


def test_retry_after_seconds_is_read_from_a_rate_limit() -> None:
    error = status_error(429, cls=openai.RateLimitError, headers={"Retry-After": "12"})

    assert classify(error).retry_after == 12.0


def test_retry_after_is_read_from_server_errors_too() -> None:
    error = status_error(503, cls=openai.InternalServerError, headers={"retry-after": "3"})

    assert classify(error).retry_after == 3.0


def test_no_retry_after_without_the_header() -> None:
    assert classify(status_error(429, cls=openai.RateLimitError)).retry_after is None
    assert classify(openai.APITimeoutError(request=REQUEST)).retry_after is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "20"}, 20.0),
        ({"Retry-After": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "9"}, 9.0),
        ({"Retry-After": "-3"}, None),
        ({"Retry-After": "inf"}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
        ({}, None),
    ],
)
def test_retry_after_seconds(headers: dict[str, str], seconds: float | None) -> None:
    assert retry_after_seconds(httpx2.Headers(headers)) == seconds


def test_retry_after_as_an_http_date() -> None:
    in_thirty_seconds = formatdate(time.time() + 30, usegmt=True)

    seconds = retry_after_seconds(httpx2.Headers({"Retry-After": in_thirty_seconds}))

    assert seconds is not None
    assert 28 <= seconds <= 30


@pytest.mark.parametrize(
    ("finish_reason", "refusal", "code"),
    [
        ("length", None, "output_truncated"),
        ("content_filter", None, "content_filtered"),
        ("stop", "I can't help with that.", "model_refused"),
    ],
)
def test_reply_error_for_unusable_replies(
    finish_reason: str, refusal: str | None, code: str
) -> None:
    error = reply_error(finish_reason=finish_reason, refusal=refusal)

    assert error is not None
    assert (error.code, error.transient) == (code, False)
    assert refusal is None or refusal not in error.message


def test_reply_error_none_for_a_finished_reply() -> None:
    assert reply_error(finish_reason="stop", refusal=None) is None
    assert reply_error(finish_reason="stop", refusal="") is None
