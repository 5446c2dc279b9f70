"""One rate limiter for the model calls of every worker: requests and tokens per minute per model.

Providers cap each model at so many requests and so many tokens a minute.
`MODEL_RPM_LIMITS` and `MODEL_TPM_LIMITS` (`gpt-4o-mini=500,gpt-4o=100`) set those caps for
auditq as a whole: every worker process counts its calls in Redis, so adding workers adds
throughput only up to the limits. The windows are kept by the `limits` library, whose Lua
scripts update them atomically in Redis:

- **requests**: a moving window, one timestamp per request and never more than the limit
  of them: exact, so no window of that length ever holds more than the limit;
- **tokens**: a sliding-window counter, two counters per model: a token limit runs to the
  hundreds of thousands, too many for one entry each. It counts the previous window for
  the share of it that the sliding window still covers, which is approximate, as is the
  estimate it is given.

A window lasts `WINDOW_S` plus `ARRIVAL_MARGIN_S` (62 s). A call is counted when it is let
through, and reaches the provider after the claim and the connection. That takes a varying
time, longest when a burst of jobs claims at once: two requests counted 62 s apart can
arrive less than 62 s apart. Counting over a longer window keeps the provider's own count
within the limit too, unless that time varies by more than the margin. The margin costs
about 3% of the limit.

**Before the claim.** A worker reserves the call before it claims the audit. A job that must
wait is deferred with arq's `Retry(defer=...)` for the time the windows give, plus jitter.
It holds no worker slot, and it spends none of the audit's attempts, because only the claim
counts them. The model and the size of the prompt come from one light SELECT, which does not
load the content. A reservation whose claim then finds nothing to run is simply spent: the
count stays on the safe side. arq counts every run of a job, these deferrals included: a
job sent back more often than its `max_tries` (three times `MAX_ATTEMPTS`: by default
several minutes of waiting, the jitter widening up to a minute a try) is dropped by arq,
and its audit, still queued, is enqueued again by the reconciler.

**Samples.** An audit of n `samples` makes n calls at once: it reserves n requests and n
times the estimate together, before its claim, and settles what all of them used.

**Estimated, then corrected.** The tokens of a call are known only from the reply.
`estimate_tokens` counts the prompt at four characters a token, plus room for a reply
that grows with the criteria. `settle` then adds whatever the reply's usage shows beyond the
estimate, and a second request when an invalid reply was asked again. Those are counted
even past the limit: the calls have been made. Tokens estimated but not used are not given
back, because a window cannot take entries out. Erring high keeps within the provider's
limit.

**A provider 429.** The provider's limits may be tighter than the settings, or shared with
other clients. A `model_rate_limited` error pauses its model for every worker for the
reply's `Retry-After`: a Redis key with that TTL, which `reserve` checks before the
windows. This comes on top of the audit's own transient retry. Where no limits are set,
a worker looks for pauses at most every `PAUSE_CHECK_S` (a quarter second), not per audit.

The keys live under the queue's name (`<QUEUE_NAME>:ratelimit:...`): the workers of one
queue are one deployment, and share one set of limits.
"""

import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from limits import RateLimitItem, RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import (
    MovingWindowRateLimiter,
    RateLimiter,
    SlidingWindowCounterRateLimiter,
)
from redis.asyncio import Redis
from redis.exceptions import RedisError

from shared.config import Settings
from shared.llm.errors import ModelError
from shared.llm.prompt import SYSTEM_PROMPT, response_format

__all__ = [
    "Clock",
    "ModelRateLimited",
    "ModelRateLimiter",
    "Reservation",
    "create_rate_limiter",
    "estimate_tokens",
]

log = structlog.get_logger(__name__)

WINDOW_S = 60
# Seconds that the time from being let through to reaching the provider may vary by; seen
# up to 1 s with 60 calls let through at once on a loaded 2-core machine.
ARRIVAL_MARGIN_S = 2
# A 429 that gives no Retry-After still pauses the model this long.
DEFAULT_PAUSE_S = 5.0
# How long a worker without limits trusts that no model is paused before asking Redis again.
# A few more calls than the workers' share of a quarter second may reach a provider that has
# just answered 429, and cost their audits an attempt; asking per audit cost each audit a
# Redis round trip, the dearest thing a job does after its model call (bench/RESULTS.md).
PAUSE_CHECK_S = 0.25
RATE_LIMITED = "model_rate_limited"
PAUSED = "paused after a 429"

CHARS_PER_TOKEN = 4
# The system prompt and the reply schema go with every call.
FIXED_PROMPT_CHARS = len(SYSTEM_PROMPT) + len(json.dumps(response_format([])))
# A finding is a verdict, a score, a rationale and a few quotes; the summary comes once.
REPLY_TOKENS_PER_CRITERION = 150
REPLY_BASE_TOKENS = 150

# A limit that is never reached, for usage that has already happened.
_UNBOUNDED = 2**31


class Clock(Protocol):
    """What the limiter reads the time from: the `time` module, or a test's clock."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back: how long a pause check is trusted."""
        ...

    def time(self) -> float:
        """Unix seconds, as `limits` stamps the request window with: the wait it leaves."""
        ...


def estimate_tokens(*, prompt_chars: int, criteria: int) -> int:
    """The tokens a call should use: its prompt (the audit's text is `prompt_chars`) and reply."""
    prompt = math.ceil((FIXED_PROMPT_CHARS + prompt_chars) / CHARS_PER_TOKEN)
    return prompt + REPLY_BASE_TOKENS + REPLY_TOKENS_PER_CRITERION * criteria


class ModelRateLimited(Exception):
    """The model's limits leave no room for the call now; try again in `wait_s` seconds."""

    def __init__(self, model: str, wait_s: float, *, reason: str) -> None:
        super().__init__(f"{model}: {reason}, room in {wait_s:.2f}s")
        self.model = model
        self.wait_s = wait_s
        self.reason = reason

    @property
    def paused(self) -> bool:
        """Refused by a 429's pause, which ends at one moment, not by a full window."""
        return self.reason == PAUSED


@dataclass(frozen=True)
class Reservation:
    """What a call took from its model's windows before it was made."""

    requests: int = 0
    tokens: int = 0


NOTHING_RESERVED = Reservation()


@dataclass(frozen=True)
class _Window:
    """One limit of one model, and what a call costs in it."""

    strategy: RateLimiter
    item: RateLimitItem
    model: str
    cost: int

    async def test(self) -> bool:
        return await self.strategy.test(self.item, self.model, cost=self.cost)

    async def take(self) -> bool:
        return await self.strategy.hit(self.item, self.model, cost=self.cost)


class ModelRateLimiter:
    """The limits of every model, counted in Redis; one per worker process."""

    def __init__(
        self,
        redis: Redis,
        *,
        requests_per_window: Mapping[str, int],
        tokens_per_window: Mapping[str, int],
        key_prefix: str,
        window_s: int = WINDOW_S,
        clock: Clock = time,
    ) -> None:
        # The windows use the worker's own connection pool: they live where the queue does,
        # whatever REDIS_URL's scheme (redis://, rediss:// or unix://), and open nothing more.
        shared_pool: dict[str, Any] = {"connection_pool": redis.connection_pool}
        self._storage = RedisStorage(
            "async+redis://", implementation="redispy", key_prefix=key_prefix, **shared_pool
        )
        self._redis = redis
        self._clock = clock
        self._pause_prefix = f"{key_prefix}:pause:"
        self._any_pause_key = f"{key_prefix}:paused-any"
        # Until when (monotonic) no pause is assumed, and how many pauses this process set.
        self._unpaused_until = 0.0
        self._pauses_set = 0
        self._requests = MovingWindowRateLimiter(self._storage)
        self._tokens = SlidingWindowCounterRateLimiter(self._storage)
        span = window_s + ARRIVAL_MARGIN_S
        self._request_limits = {
            model: RateLimitItemPerSecond(limit, span, namespace="requests")
            for model, limit in requests_per_window.items()
        }
        self._token_limits = {
            model: RateLimitItemPerSecond(limit, span, namespace="tokens")
            for model, limit in tokens_per_window.items()
        }

    async def reserve(self, model: str, *, tokens: int, requests: int = 1) -> Reservation:
        """Take `requests` (an audit's samples) and `tokens` from the model's windows, or
        raise `ModelRateLimited`.

        Every window is tested before any is taken from, so a call refused by one window
        does not use up another. Two workers racing for the last room may still waste a
        request between the test and the take; that errs on the safe side.
        """
        paused_s = await self.paused_for(model)
        if paused_s > 0:
            raise ModelRateLimited(model, paused_s, reason=PAUSED)
        windows = self._windows(model, requests=requests, tokens=tokens)
        for window in windows:
            if not await window.test():
                raise await self._refusal(window)
        for window in windows:
            if not await window.take():
                raise await self._refusal(window)
        return Reservation(
            requests=self._request_cost(model, requests), tokens=self._token_cost(model, tokens)
        )

    async def settle(
        self, model: str, reserved: Reservation, *, requests: int, tokens: int
    ) -> None:
        """Count what a call used beyond its reservation, past the limit if need be.

        Never raises: the call has been made, and its result matters more than the count.
        """
        try:
            for window in self._windows(
                model,
                requests=requests - reserved.requests,
                tokens=tokens - reserved.tokens,
                capped=False,
            ):
                if window.cost > 0:
                    await self._force(window)
        except RedisError as exc:
            log.warning("rate_limit_settle_failed", model=model, error=type(exc).__name__)

    async def pause_if_rate_limited(self, model: str, error: ModelError) -> None:
        """After a provider 429, pause the model for every worker for its `Retry-After`.

        Never raises, like `settle`.
        """
        if error.code != RATE_LIMITED:
            return
        seconds = DEFAULT_PAUSE_S if error.retry_after is None else error.retry_after
        if seconds <= 0:
            return
        self._pauses_set += 1
        self._unpaused_until = 0.0
        try:
            # The latest 429 says best how long the provider wants: it replaces any pause.
            milliseconds = math.ceil(seconds * 1000)
            await self._redis.set(self._pause_prefix + model, 1, px=milliseconds)
            await self._extend_any_pause(milliseconds)
        except RedisError as exc:
            log.warning("rate_limit_pause_failed", model=model, error=type(exc).__name__)
            return
        log.warning("model_paused", model=model, pause_s=round(seconds, 2))

    @property
    def has_limits(self) -> bool:
        return bool(self._request_limits or self._token_limits)

    async def needs_reservation(self) -> bool:
        """Whether a call must be reserved at all: some limit is set, or some model is paused.

        With neither, the worker skips the reservation and the query it needs. A deployment
        without limits asks Redis at most once per `PAUSE_CHECK_S` for this, not once per
        audit: a pause that another worker process sets is seen within that time, one that
        this process sets at once.
        """
        if self.has_limits:
            return True
        if self._clock.monotonic() < self._unpaused_until:
            return False
        pauses_set, asked_at = self._pauses_set, self._clock.monotonic()
        if await self._redis.exists(self._any_pause_key):
            return True
        if pauses_set == self._pauses_set:  # no pause of ours began while Redis answered
            self._unpaused_until = asked_at + PAUSE_CHECK_S
        return False

    async def _extend_any_pause(self, milliseconds: int) -> None:
        """Keep the `paused-any` marker alive at least as long as the longest pause."""
        left: int = await self._redis.pttl(self._any_pause_key)
        if milliseconds > left:
            await self._redis.set(self._any_pause_key, 1, px=milliseconds)

    async def paused_for(self, model: str) -> float:
        """Seconds left of the model's pause after a 429; 0.0 when it is not paused."""
        milliseconds: int = await self._redis.pttl(self._pause_prefix + model)
        return max(0, milliseconds) / 1000

    def _windows(
        self, model: str, *, requests: int, tokens: int, capped: bool = True
    ) -> list[_Window]:
        windows = []
        if item := self._request_limits.get(model):
            cost = self._request_cost(model, requests) if capped else requests
            windows.append(_Window(self._requests, item, model, cost))
        if item := self._token_limits.get(model):
            cost = self._token_cost(model, tokens) if capped else tokens
            windows.append(_Window(self._tokens, item, model, cost))
        return windows

    def _request_cost(self, model: str, requests: int) -> int:
        """What the calls take from the request window: more calls than the whole limit (five
        samples against a limit of three a minute) take all of it once the window is empty."""
        item = self._request_limits.get(model)
        return requests if item is None else min(requests, item.amount)

    def _token_cost(self, model: str, tokens: int) -> int:
        """What a call takes from the token window: a call estimated above the whole limit
        takes all of it once the window is empty, where refusing it would defer it forever."""
        item = self._token_limits.get(model)
        return 0 if item is None else min(tokens, item.amount)

    async def _refusal(self, window: _Window) -> ModelRateLimited:
        if window.strategy is self._requests:
            stats = await self._requests.get_window_stats(window.item, window.model)
            full = stats.remaining < window.cost
            wait_s = stats.reset_time - self._clock.time() if full else 0.0
            return ModelRateLimited(window.model, max(0.0, wait_s), reason="requests per minute")
        previous, previous_ttl, current, current_ttl = await self._storage.get_sliding_window(
            window.item.key_for(window.model), window.item.get_expiry()
        )
        wait_s = sliding_window_wait(
            previous=previous,
            previous_ttl=previous_ttl,
            current=current,
            current_ttl=current_ttl,
            window_s=window.item.get_expiry(),
            room=window.item.amount - window.cost,
        )
        return ModelRateLimited(window.model, wait_s, reason="tokens per minute")

    async def _force(self, window: _Window) -> None:
        key = window.item.key_for(window.model)
        expiry = window.item.get_expiry()
        if window.strategy is self._requests:
            await self._storage.acquire_entry(key, _UNBOUNDED, expiry, amount=window.cost)
        else:
            await self._storage.acquire_sliding_window_entry(key, _UNBOUNDED, expiry, window.cost)


def sliding_window_wait(
    *,
    previous: int,
    previous_ttl: float,
    current: int,
    current_ttl: float,
    window_s: float,
    room: int,
) -> float:
    """Seconds until a sliding-window counter holds no more than `room`, if nothing is added.

    The previous window counts for the share of it still covered, which shrinks to nothing
    as the current window runs out (`current_ttl - window_s` from now: the library keeps the
    current counter for two windows). The current window then becomes the previous one and
    shrinks in turn.
    """
    previous_share = previous * previous_ttl / window_s
    excess = previous_share + current - room
    if excess <= 0:
        return 0.0
    if previous and current <= room:
        return excess * window_s / previous
    current_ends_in = max(0.0, current_ttl - window_s)
    return current_ends_in + window_s * (current - room) / current


def create_rate_limiter(
    settings: Settings, redis: Redis, *, window_s: int = WINDOW_S, clock: Clock = time
) -> ModelRateLimiter:
    """The limiter of a worker process, over its Redis connection (arq's pool).

    The settings are per minute; only tests shorten `window_s`, to see windows pass, or
    give a `clock` of their own.
    """
    return ModelRateLimiter(
        redis,
        requests_per_window=settings.model_rpm_limits,
        tokens_per_window=settings.model_tpm_limits,
        key_prefix=f"{settings.queue_name}:ratelimit",
        window_s=window_s,
        clock=clock,
    )
