"""The format of keys, and how a presented one is compared with the stored digest."""

import hmac
from typing import Any

import pytest

from shared.tenants import keys


def test_a_key_is_aq_and_at_least_32_url_safe_characters() -> None:
    made = {keys.new_key() for _ in range(100)}

    assert len(made) == 100
    for key in made:
        assert key.startswith("aq_")
        random_part = key.removeprefix("aq_")
        assert len(random_part) >= 32
        assert set(random_part) <= set(
            "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
        )


def test_only_the_digest_and_a_short_prefix_come_from_a_key() -> None:
    key = keys.new_key()

    assert keys.digest(key) == keys.digest(key)
    assert len(keys.digest(key)) == 64
    assert key not in keys.digest(key)
    assert keys.display_prefix(key) == key[: keys.DISPLAY_CHARS]
    assert keys.looks_like_key(key)
    assert not keys.looks_like_key(keys.display_prefix(key))


def test_logs_get_at_most_a_third_of_what_was_presented() -> None:
    key = keys.new_key()

    assert keys.log_prefix(key) == keys.display_prefix(key)
    assert keys.log_prefix("key-one") == "ke"
    assert keys.log_prefix("") == ""


def test_digests_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[Any, Any]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = keys.new_key()

    assert keys.matches(keys.digest(key), keys.digest(key))
    assert not keys.matches(keys.digest(key), keys.digest(keys.new_key()))
    assert len(compared) == 2
