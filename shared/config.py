"""Settings for every auditq process, read from the environment and `.env`.

The variable names are part of the contract: deployments and outside tools rely on
them, so they are spelled exactly as documented in `.env.example` and the README.
"""

from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Annotated, Literal, NamedTuple

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from shared.webhooks.signing import secret_key

CommaList = Annotated[list[str], NoDecode]
# The context of today's usual hosted models (gpt-4o, gpt-4o-mini); a smaller
# self-hosted model is named in MODEL_CONTEXT_TOKENS.
DEFAULT_CONTEXT_TOKENS = 128_000
DAY_S = 86_400
# `gpt-4o-mini=500,gpt-4o=100`: a limit per model; a model not named has none.
ModelLimits = Annotated[dict[str, int], NoDecode]


class TokenPrices(NamedTuple):
    """A model's prices in USD per million tokens; cached input at the input price unless
    given."""

    input: Decimal
    output: Decimal
    cached_input: Decimal | None = None


# `gpt-4o-mini=0.15:0.60,my-llama=0.2:0.2:0.1`: input, output and optionally cached input.
ModelPrices = Annotated[dict[str, TokenPrices], NoDecode]


class Settings(BaseSettings):
    # An error names the setting, never its value: several hold secrets.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_ignore_empty=True,
        extra="ignore",
        frozen=True,
        hide_input_in_errors=True,
    )

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/auditq"
    # `transaction` where DATABASE_URL is a pooler in transaction mode (PgBouncer's
    # `pool_mode = transaction`): no prepared statement outlives its statement (shared/db.py).
    database_pool_mode: Literal["session", "transaction"] = "session"
    # PostgreSQL itself, past any pooler: the key directory's LISTEN and the migrations,
    # which a transaction pooler cannot carry. Unset: DATABASE_URL.
    database_direct_url: str | None = None
    redis_url: str = "redis://127.0.0.1:6379/0"

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    allowed_models: CommaList = Field(default_factory=list)
    openai_timeout_s: float = Field(default=60.0, gt=0)
    # Sent with every call; a model that refuses one is called without it (shared/llm/sampling.py).
    openai_temperature: float = Field(default=0.0, ge=0, le=2)
    openai_seed: int | None = Field(default=None, ge=-(2**63), le=2**63 - 1)
    # The most samples (independent model calls) an audit may ask for; 5 at most.
    max_samples: int = Field(default=5, ge=1, le=5)

    # Shared by every worker through Redis (shared/llm/ratelimit.py).
    model_rpm_limits: ModelLimits = Field(default_factory=dict)
    model_tpm_limits: ModelLimits = Field(default_factory=dict)
    # Prices that override and extend the maintained table (shared/spend/prices.py).
    model_prices: ModelPrices = Field(default_factory=dict)

    max_attempts: int = Field(default=5, ge=1)
    worker_concurrency: int = Field(default=50, ge=1)
    queue_name: str = "auditq:queue"
    # The share of worker slots bulk audits keep while interactive ones wait
    # (docs/SCHEDULING.md); 0.5 would make the two classes equal.
    bulk_min_share: float = Field(default=0.1, gt=0, le=0.5)

    max_content_chars: int = Field(default=100_000, ge=1)
    # The criteria's descriptions together, of an audit and of a rubric: each is sent
    # with every call and shown in every list item.
    max_criteria_chars: int = Field(default=10_000, ge=1)
    # A model's context window in tokens, `gpt-4o-mini=128000,llama3=8192`: an audit whose
    # estimated prompt is larger is refused at submit (`prompt_too_large`). A model not
    # named here falls back on DEFAULT_CONTEXT_TOKENS.
    model_context_tokens: ModelLimits = Field(default_factory=dict)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # Request bodies one API process holds at once, all requests together (api/bodies.py).
    max_inflight_body_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)
    # Seconds a client may take to send a request's headers, and then its body.
    request_read_timeout_s: float = Field(default=30.0, gt=0)
    # `GET /batches/{id}/results` streams one API process serves at once. A stream is
    # bound by PostgreSQL's CPU and the event loop's, not by waiting: more streams per
    # process read little more and slow every other request (docs/RELIABILITY.md).
    max_result_streams: int = Field(default=4, ge=1)

    cors_origins: CommaList = Field(default_factory=lambda: ["*"])
    # Host headers the API answers (`*.example.com` allowed); `*` answers any.
    allowed_hosts: CommaList = Field(default_factory=lambda: ["*"])
    # Signs cursors; unset: a random key per process (shared/secret.py).
    secret_key: SecretStr | None = Field(default=None, min_length=16)
    # `none`: public, everything belongs to tenant `default`. `keys`: a Bearer key of
    # `auditq key create` on every route but /health and the docs.
    auth: Literal["none", "keys"] = "none"
    # Admin keys of tenant `default`, outside the database; setting them implies AUTH=keys.
    api_keys: CommaList = Field(default_factory=list)
    # A tenant's queued and running audits at most, and its submissions a minute;
    # empty: unlimited. `auditq tenant set` overrides both per tenant.
    tenant_max_queued: int | None = Field(default=None, ge=1)
    tenant_submit_rpm: int | None = Field(default=None, ge=1)
    # Finished audits older than this many days are deleted; unset keeps them forever.
    retention_days: int | None = Field(default=None, ge=1)
    # Signs webhooks (`whsec_…`, shared/webhooks/signing.py) of the tenants without their
    # own (`auditq tenant set --webhook-secret`); unset, such tenants cannot use callbacks.
    webhook_secret: SecretStr | None = None
    # How long an event is tried before it is given up (`expired`).
    webhook_max_age_s: float = Field(default=86_400.0, gt=0)
    # Callbacks to loopback, private and other non-public addresses, and over plain http:
    # for local development and tests only (shared/webhooks/addresses.py).
    webhook_allow_private: bool = False

    # OpenTelemetry's own variable: traces go there over OTLP/HTTP when set, and are off
    # when unset (shared/tracing.py). The SDK's other OTEL_* variables apply as usual.
    otel_exporter_otlp_endpoint: str | None = None
    # The Procfile's `web` (api/__main__.py) runs this many uvicorn processes on PORT: each
    # has its own pool, key cache and per-process limits.
    web_concurrency: int = Field(default=1, ge=1)

    # A worker serves its Prometheus metrics on the first free port from this one up, so
    # several workers on one host each get their own (worker/metrics.py); unset: off.
    metrics_port: int | None = Field(default=None, ge=1, le=65535)

    log_level: str = "INFO"
    # `auto`: lines for people on a terminal, JSON lines elsewhere (shared/logging.py).
    log_format: Literal["auto", "json", "console"] = "auto"
    port: int = 8000

    @field_validator("allowed_models", "cors_origins", "allowed_hosts", "api_keys", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("model_rpm_limits", "model_tpm_limits", "model_context_tokens", mode="before")
    @classmethod
    def split_model_limits(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_model_limits(value)
        return value

    @field_validator("model_prices", mode="before")
    @classmethod
    def split_model_prices(cls, value: object) -> object:
        if isinstance(value, str):
            return parse_model_prices(value)
        return value

    @field_validator("model_rpm_limits", "model_tpm_limits", "model_context_tokens")
    @classmethod
    def positive_limits(cls, value: dict[str, int]) -> dict[str, int]:
        for model, limit in value.items():
            if limit < 1:
                raise ValueError(f"the limit of {model!r} must be a positive integer")
        return value

    @field_validator("database_url", "database_direct_url")
    @classmethod
    def use_asyncpg_driver(cls, value: str | None) -> str | None:
        """Accept the plain `postgresql://` form that most platforms hand out."""
        if value is None:
            return None
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value.removeprefix(prefix)
        return value

    @field_validator("webhook_secret")
    @classmethod
    def standard_webhooks_secret(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            secret_key(value.get_secret_value())  # says what is wrong with a malformed one
        return value

    @model_validator(mode="after")
    def budget_holds_one_body(self) -> "Settings":
        if self.max_inflight_body_bytes < self.max_body_bytes:
            raise ValueError(
                "MAX_INFLIGHT_BODY_BYTES must be at least MAX_BODY_BYTES, "
                "or a body of the largest size allowed could never be read"
            )
        return self

    @model_validator(mode="after")
    def events_outlive_their_tries(self) -> "Settings":
        # An event goes with its audit (ON DELETE CASCADE): one still being tried when
        # retention deletes the audit would be lost without a word.
        if self.retention_days is not None and self.webhook_max_age_s > self.retention_days * DAY_S:
            raise ValueError(
                f"WEBHOOK_MAX_AGE_S ({self.webhook_max_age_s:g}) must be at most RETENTION_DAYS "
                f"({self.retention_days}) in seconds, or retention would delete audits whose "
                "events are still being tried"
            )
        return self

    @property
    def direct_database_url(self) -> str:
        """PostgreSQL past any pooler: `DATABASE_DIRECT_URL`, else `DATABASE_URL`."""
        return self.database_direct_url or self.database_url

    @property
    def uses_keys(self) -> bool:
        """Whether requests need a key: `AUTH=keys`, or `API_KEYS` set (which implies it)."""
        return self.auth == "keys" or bool(self.api_keys)

    @property
    def models(self) -> list[str]:
        """Models a request may ask for: `ALLOWED_MODELS`, or just the default one."""
        return self.allowed_models or [self.openai_model]

    def context_tokens(self, model: str) -> int:
        """The context window of `model`: `MODEL_CONTEXT_TOKENS`, else the default."""
        return self.model_context_tokens.get(model, DEFAULT_CONTEXT_TOKENS)


def parse_model_limits(value: str) -> dict[str, int]:
    """`"gpt-4o-mini=500, gpt-4o=100"` -> `{"gpt-4o-mini": 500, "gpt-4o": 100}`."""
    limits: dict[str, int] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        # rpartition: the limit is what follows the last `=`, whatever the model name holds.
        model, equals, limit = (part.strip() for part in item.rpartition("="))
        if not equals or not model or not limit.isdigit():
            raise ValueError(f"expected `model=limit` (a whole number), got {item!r}")
        if model in limits:
            raise ValueError(f"{model!r} is given a limit twice")
        limits[model] = int(limit)
    return limits


def parse_model_prices(value: str) -> dict[str, TokenPrices]:
    """`"gpt-4o-mini=0.15:0.60"` -> `{"gpt-4o-mini": TokenPrices(0.15, 0.60)}`, in USD per
    million tokens, as exact decimals."""
    prices: dict[str, TokenPrices] = {}
    for item in (part.strip() for part in value.split(",")):
        if not item:
            continue
        model, equals, amounts = (part.strip() for part in item.rpartition("="))
        parts = amounts.split(":")
        if not equals or not model or len(parts) not in (2, 3):
            raise ValueError(
                f"expected `model=input:output` or `model=input:output:cached_input` "
                f"(USD per million tokens), got {item!r}"
            )
        if model in prices:
            raise ValueError(f"{model!r} is given a price twice")
        prices[model] = TokenPrices(*(_usd(part, item) for part in parts))
    return prices


def _usd(text: str, item: str) -> Decimal:
    try:
        amount = Decimal(text.strip())
    except InvalidOperation:
        amount = Decimal("NaN")
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"prices are amounts of USD of 0 or more, got {text!r} in {item!r}")
    return amount


@lru_cache
def get_settings() -> Settings:
    return Settings()
