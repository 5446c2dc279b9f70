"""Request and response bodies of the audits API."""

import math
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from typing import Annotated, Any, Literal, Self
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from shared.audits.priority import Priority
from shared.audits.status import AuditStatus
from shared.text import json_size, reject_nul
from shared.webhooks.urls import CallbackUrl

Verdict = Literal["pass", "partial", "fail", "not_applicable"]

CRITERION_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
MAX_CRITERIA = 50
MAX_METADATA_BYTES = 16 * 1024
MAX_METADATA_DEPTH = 32
# `rubric.version` is an `integer` column; a larger number is no version at all.
MAX_RUBRIC_VERSION = 2**31 - 1
MAX_SAMPLES = 5

NoNul = AfterValidator(reject_nul)


def _keys_and_leaves(value: Any, *, depth: int = 1) -> Iterator[Any]:
    """Every key and leaf of a JSON value, refusing nesting that would exhaust the stack.

    The depth is checked before recursing, so a hostile document cannot reach
    the recursion limits of the serializers that handle it later.
    """
    if isinstance(value, dict | list) and depth > MAX_METADATA_DEPTH:
        raise ValueError(f"must be nested at most {MAX_METADATA_DEPTH} levels deep")
    if isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _keys_and_leaves(item, depth=depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _keys_and_leaves(item, depth=depth + 1)
    else:
        yield value


def _storable_leaf(value: Any) -> None:
    """`jsonb` holds neither NUL nor the NaN and Infinity that Python's JSON parser lets in."""
    if isinstance(value, str):
        reject_nul(value)
    elif isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite (NaN and Infinity are not JSON)")


def _small_json_object(value: dict[str, Any]) -> dict[str, Any]:
    for leaf in _keys_and_leaves(value):
        _storable_leaf(leaf)
    size = json_size(value)
    if size > MAX_METADATA_BYTES:
        raise ValueError(f"must be at most {MAX_METADATA_BYTES} bytes as JSON, got {size}")
    return value


# Its upper bound, MAX_CONTENT_CHARS, is the deployment's: shared/audits/limits.py.
Content = Annotated[str, Field(min_length=1), NoNul]
Metadata = Annotated[dict[str, Any], AfterValidator(_small_json_object)]


class Criterion(BaseModel):
    """One thing the content is judged against."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=CRITERION_ID_PATTERN, examples=["claims_substantiated"])]
    description: Annotated[str, Field(min_length=1, max_length=2000), NoNul]
    weight: Annotated[float, Field(gt=0, le=100, allow_inf_nan=False)] = 1.0


def _unique_ids(criteria: list[Criterion]) -> list[Criterion]:
    duplicates = [id_ for id_, n in Counter(c.id for c in criteria).items() if n > 1]
    if duplicates:
        raise ValueError(f"criterion ids must be unique; repeated: {', '.join(sorted(duplicates))}")
    return criteria


CriteriaList = Annotated[
    list[Criterion],
    Field(min_length=1, max_length=MAX_CRITERIA),
    AfterValidator(_unique_ids),
]


class AuditFields(BaseModel):
    """What every audit is sent with, alone (`AuditCreate`) or as an item of a batch."""

    model_config = ConfigDict(extra="forbid")

    subject: Annotated[str, Field(min_length=1, max_length=200), NoNul]
    content: Content
    criteria: CriteriaList | None = None
    rubric: Annotated[str, Field(min_length=1, max_length=64), NoNul] | None = None
    rubric_version: Annotated[int, Field(ge=1, le=MAX_RUBRIC_VERSION)] | None = None
    # One of ALLOWED_MODELS, the deployment's: shared/audits/limits.py.
    model: str | None = None
    metadata: Metadata = Field(default_factory=dict)
    # Python's JSON parser lets NaN in; refused by name rather than as "not <= 100".
    pass_threshold: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = 70.0
    priority: Priority | None = Field(
        default=None,
        description="`interactive` (the default of `POST /audits`) runs before `bulk` (the "
        "default of a batch's audits); see docs/SCHEDULING.md.",
    )
    # At most MAX_SAMPLES too, the deployment's: shared/audits/limits.py.
    samples: Annotated[int, Field(ge=1, le=MAX_SAMPLES)] = Field(
        default=1,
        description="Independent model calls to judge the content with, at once: each "
        "finding keeps the majority verdict and reports its `agreement`. Costs n times the "
        "tokens; takes as long as the slowest call.",
    )

    @model_validator(mode="after")
    def criteria_xor_rubric(self) -> Self:
        if (self.criteria is None) == (self.rubric is None):
            raise ValueError("give exactly one of `criteria` or `rubric`")
        if self.rubric_version is not None and self.rubric is None:
            raise ValueError("`rubric_version` needs `rubric`")
        return self


class AuditCreate(AuditFields):
    """What a client sends to start one audit."""

    callback_url: CallbackUrl | None = None


class Finding(BaseModel):
    """The model's judgement of the content against one criterion (its samples' majority)."""

    criterion_id: str
    verdict: Verdict
    score: Annotated[float, Field(ge=0, le=100)]
    rationale: str
    evidence: list[str]
    agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Share of the samples that gave this verdict (1: all of them); null for "
        "audits run before samples.",
    )


class AuditResult(BaseModel):
    """The outcome of a succeeded audit; `score` and `verdict` are computed by auditq."""

    score: float | None = Field(
        description="Weighted mean of the applicable findings' scores; null when none applies."
    )
    verdict: Literal["pass", "fail"]
    pass_threshold: float
    summary: str
    findings: list[Finding]
    dropped_quotes: int = Field(
        default=0, description="Evidence quotes the model gave that are not in the content."
    )
    agreement: float | None = Field(
        default=None,
        ge=0,
        le=1,
        description="Mean of the findings' `agreement`; null for audits run before samples.",
    )
    samples: int | None = Field(
        default=None,
        description="Samples the findings were combined from: those that answered, a "
        "majority of those asked for; null for audits run before samples.",
    )


class AuditError(BaseModel):
    code: str
    message: str


class Usage(BaseModel):
    """Tokens and cost of every model call that was answered, and so billed: every
    attempt's, every sample's, and the corrective call of an invalid reply; on success, and
    on a failure the model answered (a refusal, a reply that could not be used). Null when
    no call was answered."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    cost_usd: float | None = Field(
        description="USD, from `MODEL_PRICES` or the maintained price table; null when the "
        "model has no price."
    )


class Provenance(BaseModel):
    """What produced a succeeded audit's result, so that it can be traced and replayed."""

    model: str | None = Field(
        description="The model as the provider named it in its reply (e.g. a dated snapshot)."
    )
    model_requested: str = Field(description="The model the call asked for.")
    prompt_version: str | None = Field(description="Of the instructions and the reply schema.")
    schema_sha256: str | None = Field(
        description="SHA-256 of the reply schema sent, as compact JSON with sorted keys."
    )
    provider_request_id: str | None = Field(
        description="The provider's `x-request-id` of the call whose reply was kept (the first "
        "sample's)."
    )
    temperature: float | None = Field(description="As sent; null when not sent.")
    seed: int | None = Field(description="As sent; null when not sent.")
    auditq_version: str | None = Field(description="The version of the worker that ran it.")


class AuditRead(BaseModel):
    """An audit as clients see it in lists (without its content)."""

    id: UUID
    tenant: str = Field(description="The tenant that owns it (`default` without keys).")
    status: AuditStatus
    subject: str
    model: str
    criteria: list[Criterion]
    rubric: str | None
    rubric_version: int | None
    metadata: dict[str, Any]
    batch_id: UUID | None
    priority: Priority
    attempts: int
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    result: AuditResult | None
    error: AuditError | None
    usage: Usage | None
    samples: int = Field(description="Independent model calls asked for (1-5).")
    rerun_of: UUID | None = Field(
        description="The audit this one re-runs (`POST /audits/{id}/rerun`), if any."
    )
    provenance: Provenance | None = Field(
        description="What produced the result; null until the audit succeeded."
    )
    callback_url: str | None = Field(
        description="Where its events go: its own, or its batch's when the batch asked for "
        "`item_events`."
    )


class AuditDetail(AuditRead):
    """One audit, with the content it judged."""

    content: str


class AuditPage(BaseModel):
    items: list[AuditRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
