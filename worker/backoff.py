"""When a transient failure, or a job the rate limiter sent back, is tried again."""

import random

BASE_DELAY_S = 2.0
MAX_DELAY_S = 120.0
RATE_LIMIT_JITTER_S = 1.0
MAX_RATE_LIMIT_JITTER_S = 60.0


def retry_delay(attempt: int, *, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, never sooner than the provider's `Retry-After`.

    The jitter keeps audits that failed together (a 429 burst, an outage) from
    coming back together; half the delay is kept so the backoff still grows.
    """
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


def rate_limit_delay(wait_s: float, *, job_try: int) -> float:
    """The rate limiter's wait, plus jitter that widens each time the same job is sent back.

    Jobs refused together would all come back when the window frees its first room, and
    all but a few be refused again. Spreading them wider each time lets a backlog far
    larger than the limit drain without every job asking every second.
    """
    spread = min(MAX_RATE_LIMIT_JITTER_S, RATE_LIMIT_JITTER_S * 2 ** (job_try - 1))
    return wait_s + random.uniform(0, spread)
