"""When a transient failure is tried again: exponential, jittered, never before Retry-After;
and when a job the rate limiter sent back comes back: after its wait, spread wider each try."""

import pytest

from worker.backoff import (
    BASE_DELAY_S,
    MAX_DELAY_S,
    MAX_RATE_LIMIT_JITTER_S,
    RATE_LIMIT_JITTER_S,
    rate_limit_delay,
    retry_delay,
)

DRAWS = 200


def delays(attempt: int, *, retry_after: float | None = None) -> list[float]:
    return [retry_delay(attempt, retry_after=retry_after) for _ in range(DRAWS)]


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5])
def test_the_delay_doubles_per_attempt_with_half_of_it_jittered(attempt: int) -> None:
    ceiling = BASE_DELAY_S * 2 ** (attempt - 1)

    drawn = delays(attempt)

    assert all(ceiling / 2 <= d <= ceiling for d in drawn)
    assert len(set(drawn)) > 1  # jittered, so audits that failed together spread out


def test_the_delay_is_capped() -> None:
    assert all(MAX_DELAY_S / 2 <= d <= MAX_DELAY_S for d in delays(50))


def test_retry_after_is_honoured_when_longer_than_the_backoff() -> None:
    assert delays(1, retry_after=30.0) == [30.0] * DRAWS
    assert delays(20, retry_after=600.0) == [600.0] * DRAWS  # even past the cap


def test_a_shorter_retry_after_does_not_shorten_the_backoff() -> None:
    assert all(4.0 <= d <= 8.0 for d in delays(3, retry_after=0.5))


def test_a_zero_retry_after_means_no_advice() -> None:
    assert all(1.0 <= d <= 2.0 for d in delays(1, retry_after=0.0))


@pytest.mark.parametrize("job_try", [1, 2, 3, 4])
def test_a_rate_limited_job_waits_its_turn_plus_jitter_that_widens_each_try(job_try: int) -> None:
    spread = RATE_LIMIT_JITTER_S * 2 ** (job_try - 1)

    drawn = [rate_limit_delay(30.0, job_try=job_try) for _ in range(DRAWS)]

    assert all(30.0 <= d <= 30.0 + spread for d in drawn)
    assert max(drawn) > 30.0 + spread / 2  # the whole spread is used, not just its start


def test_the_rate_limit_jitter_is_capped() -> None:
    drawn = [rate_limit_delay(1.0, job_try=40) for _ in range(DRAWS)]

    assert all(1.0 <= d <= 1.0 + MAX_RATE_LIMIT_JITTER_S for d in drawn)
