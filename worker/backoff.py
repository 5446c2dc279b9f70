"""When a transient failure is tried again."""

import random

BASE_DELAY_S = 2.0
MAX_DELAY_S = 120.0


def retry_delay(attempt: int, *, retry_after: float | None = None) -> float:
    """Exponential backoff with jitter, never sooner than the provider's `Retry-After`.

    The jitter keeps audits that failed together (a 429 burst, an outage) from
    coming back together; half the delay is kept so the backoff still grows.
    """
    ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (attempt - 1))
    delay = random.uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)
