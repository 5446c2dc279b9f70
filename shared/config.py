"""Settings for every auditq process, read from the environment and `.env`.

The variable names are part of the contract (DESIGN §6): deployments and outside
tools rely on them, so they are spelled exactly as documented in `.env.example`.
"""

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_file=".env", env_ignore_empty=True, extra="ignore", frozen=True
    )

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/auditq"
    redis_url: str = "redis://127.0.0.1:6379/0"

    openai_api_key: str | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    allowed_models: CommaList = Field(default_factory=list)
    openai_timeout_s: float = Field(default=60.0, gt=0)

    max_attempts: int = Field(default=5, ge=1)
    worker_concurrency: int = Field(default=50, ge=1)
    queue_name: str = "auditq:queue"

    max_content_chars: int = Field(default=100_000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    cors_origins: CommaList = Field(default_factory=lambda: ["*"])
    # Empty: every endpoint is public. Set: Bearer keys for all but /health and the docs.
    api_keys: CommaList = Field(default_factory=list)
    # Finished audits older than this many days are deleted; unset keeps them forever.
    retention_days: int | None = Field(default=None, ge=1)

    log_level: str = "INFO"
    port: int = 8000

    @field_validator("allowed_models", "cors_origins", "api_keys", mode="before")
    @classmethod
    def split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def use_asyncpg_driver(cls, value: str) -> str:
        """Accept the plain `postgresql://` form that most platforms hand out."""
        for prefix in ("postgresql://", "postgres://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value.removeprefix(prefix)
        return value

    @property
    def models(self) -> list[str]:
        """Models a request may ask for: `ALLOWED_MODELS`, or just the default one."""
        return self.allowed_models or [self.openai_model]


@lru_cache
def get_settings() -> Settings:
    return Settings()
