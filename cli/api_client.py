"""A thin httpx wrapper for the auditq API: JSON in and out, problems raised as `ApiProblem`."""

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import httpx

from cli.errors import CliError

# Read from the environment only: a key on the command line would show in `ps` and shell history.
API_KEY_ENV = "AUDITQ_API_KEY"
API_PREFIX = "/api/v1"
TIMEOUT = httpx.Timeout(30.0, connect=5.0)


@dataclass(frozen=True)
class Issue:
    """One entry of a problem's `errors`: where (`loc`) and what (`msg`)."""

    loc: tuple[str | int, ...]
    msg: str


class ApiProblem(CliError):
    """The API refused a request; shown as `code: detail`, from its problem details."""

    def __init__(
        self,
        *,
        status: int,
        code: str,
        detail: str,
        errors: list[Issue],
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(f"{code}: {detail}", details=[_describe(issue) for issue in errors])
        self.status = status
        self.code = code
        self.detail = detail
        self.errors = errors
        self.retry_after_s = retry_after_s  # the response's Retry-After, in seconds

    @property
    def transient(self) -> bool:
        """Worth asking again later: the API is overloaded or its database is away."""
        return self.status == 429 or self.status >= 500


class ApiUnreachable(CliError):
    """Nothing answers at the API's address."""

    def __init__(self, api_url: str) -> None:
        super().__init__(f"cannot reach the auditq API at {api_url} — is `make run` running?")


@dataclass(frozen=True)
class Reply:
    body: dict[str, Any]
    replayed: bool = False  # an earlier request with the same Idempotency-Key created it


class ApiClient:
    """The auditq API at `api_url` (its /api/v1 prefix is added here).

    `api_key` (default: `AUDITQ_API_KEY`) is sent as a bearer token, for an API
    deployed with `AUTH=keys`.
    """

    def __init__(
        self,
        api_url: str,
        *,
        api_key: str | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # The API's root; a URL given with the /api/v1 prefix is understood too.
        self.api_url = api_url.rstrip("/").removesuffix(API_PREFIX)
        if not self.api_url.startswith(("http://", "https://")):
            raise CliError(f"--api-url must be an http:// or https:// URL, got {api_url!r}")
        headers = {"User-Agent": "auditq-cli"}
        api_key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(
            base_url=self.api_url + API_PREFIX,
            timeout=TIMEOUT,
            transport=transport,
            headers=headers,
        )

    def __enter__(self) -> "ApiClient":
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        with self._transport_errors():
            response = self._http.get(path, params=params or None)
        return self._reply(response).body

    def post(self, path: str, body: Any, *, idempotency_key: str | None = None) -> Reply:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        with self._transport_errors():
            response = self._http.post(path, json=body, headers=headers)
        return self._reply(response)

    @contextmanager
    def stream(self, path: str, **params: Any) -> Iterator[Iterator[bytes]]:
        """The response body of a GET, as it arrives, never held in memory as a whole."""
        query = {name: value for name, value in params.items() if value is not None}
        with self._transport_errors(), self._http.stream("GET", path, params=query) as response:
            if response.is_error:
                response.read()
                raise problem_of(response)
            yield response.iter_bytes()

    @contextmanager
    def _transport_errors(self) -> Iterator[None]:
        try:
            yield
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            raise ApiUnreachable(self.api_url) from exc
        except httpx.TransportError as exc:
            raise CliError(
                f"the auditq API at {self.api_url} stopped answering: {type(exc).__name__} {exc}"
            ) from exc

    def _reply(self, response: httpx.Response) -> Reply:
        if response.is_error:
            raise problem_of(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise CliError(
                f"{self.api_url} answered {response.request.url.path} with something other than "
                "a JSON object: is it the auditq API?"
            )
        replayed = response.headers.get("Idempotent-Replayed") == "true"
        return Reply(body=body, replayed=replayed)


def _seconds(retry_after: str | None) -> float | None:
    """A Retry-After in seconds (the API sends no HTTP dates)."""
    return float(retry_after) if retry_after and retry_after.isdigit() else None


def problem_of(response: httpx.Response) -> ApiProblem:
    """The problem details of an error response, or what can be said without them."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("code"), str):
        problem = ApiProblem(
            status=response.status_code,
            code=body["code"],
            detail=str(body.get("detail", "")),
            errors=_issues(body.get("errors")),
            retry_after_s=_seconds(response.headers.get("retry-after")),
        )
    else:
        problem = ApiProblem(
            status=response.status_code,
            code=f"http_{response.status_code}",
            detail=response.reason_phrase or "the API answered with an error",
            errors=[],
        )
    hint = _HINTS.get(problem.code) or _HINTS.get(str(response.status_code))
    if hint:
        problem.details.append(hint)
    return problem


# What to do about a problem, by its code, or by HTTP status ("401").
_HINTS = {
    "401": f"set {API_KEY_ENV} to a key of `auditq key create` (revoked keys are refused)",
    "forbidden": "this wants an admin key: auditq key create --tenant NAME --admin",
    "rubric_not_found": "publish it first: auditq rubric push RUBRIC_FILE",
    "quota_exceeded": "the tenant has as many audits waiting as it may: wait for some to "
    "finish, or ask ops to raise it (auditq tenant set NAME --max-queued N)",
    "rate_limited": "wait the seconds the detail names, or ask ops to raise the tenant's "
    "rate (auditq tenant set NAME --submit-rpm N)",
    "batch_budget_spent": "run its audits again as a new batch: auditq batch rerun BATCH_ID",
}


def _issues(errors: Any) -> list[Issue]:
    if not isinstance(errors, list):
        return []
    return [
        Issue(loc=tuple(error.get("loc") or ()), msg=str(error.get("msg", "")))
        for error in errors
        if isinstance(error, dict)
    ]


def _describe(issue: Issue) -> str:
    return f"{'.'.join(str(part) for part in issue.loc)}: {issue.msg}"
