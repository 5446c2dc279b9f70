"""Settings read from the environment, as a deployment sets them."""

import pytest
from pydantic import ValidationError

from shared.config import Settings, get_settings
from tests.environment import environment


@pytest.mark.parametrize("variable", ["MODEL_RPM_LIMITS", "MODEL_TPM_LIMITS"])
def test_model_limits_are_read_as_model_equals_limit(variable: str) -> None:
    with environment(**{variable: " gpt-4o-mini=500 , ft:gpt-4o:acme::x1=20,gpt-4o=100,"}):
        limits = getattr(get_settings(), variable.lower())

    assert limits == {"gpt-4o-mini": 500, "ft:gpt-4o:acme::x1": 20, "gpt-4o": 100}


def test_no_model_limits_means_unlimited() -> None:
    with environment(MODEL_RPM_LIMITS="", MODEL_TPM_LIMITS=""):
        settings = get_settings()

    assert (settings.model_rpm_limits, settings.model_tpm_limits) == ({}, {})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("gpt-4o-mini", "model=limit"),
        ("gpt-4o-mini=", "model=limit"),
        ("=500", "model=limit"),
        ("gpt-4o-mini=5k", "model=limit"),
        ("gpt-4o-mini=-5", "model=limit"),
        ("gpt-4o-mini=1.5", "model=limit"),
        ("gpt-4o-mini=0", "positive"),
        ("gpt-4o-mini=5,gpt-4o-mini=6", "twice"),
    ],
)
def test_a_malformed_model_limit_is_refused_at_startup(value: str, problem: str) -> None:
    with environment(MODEL_TPM_LIMITS=value), pytest.raises(ValidationError, match=problem):
        get_settings()


def test_model_limits_can_be_given_as_a_mapping() -> None:
    assert Settings(model_rpm_limits={"gpt-4o-mini": 60}).model_rpm_limits == {"gpt-4o-mini": 60}
    with pytest.raises(ValidationError, match="positive"):
        Settings(model_rpm_limits={"gpt-4o-mini": 0})


def test_a_body_budget_smaller_than_one_body_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="MAX_INFLIGHT_BODY_BYTES"):
        Settings(max_body_bytes=2 * 1024 * 1024, max_inflight_body_bytes=1024 * 1024)


def test_events_tried_longer_than_audits_are_kept_are_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="WEBHOOK_MAX_AGE_S"):
        Settings(retention_days=1, webhook_max_age_s=2 * 86_400)
    assert Settings(retention_days=1, webhook_max_age_s=86_400).retention_days == 1
    assert Settings(webhook_max_age_s=30 * 86_400).retention_days is None


def test_a_short_secret_key_is_refused_at_startup() -> None:
    with pytest.raises(ValidationError, match="secret_key"):
        Settings(secret_key="short")


def test_the_direct_url_is_the_database_url_unless_set() -> None:
    pooler = "postgresql://app@pgbouncer:6432/auditq"
    with environment(DATABASE_URL=pooler):
        assert Settings().direct_database_url == "postgresql+asyncpg://app@pgbouncer:6432/auditq"
    with environment(DATABASE_URL=pooler, DATABASE_DIRECT_URL="postgres://app@postgres/auditq"):
        direct = Settings()
    assert direct.direct_database_url == "postgresql+asyncpg://app@postgres/auditq"
    assert direct.database_url == "postgresql+asyncpg://app@pgbouncer:6432/auditq"


def test_an_unknown_pool_mode_is_refused_at_startup() -> None:
    # `statement` pooling has no transaction of several statements: auditq needs them.
    with environment(DATABASE_POOL_MODE="statement"), pytest.raises(ValidationError) as refused:
        Settings()
    assert refused.value.errors()[0]["loc"] == ("database_pool_mode",)
