"""Settings read from the environment, changed for the length of a block."""

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shared.config import get_settings


@contextmanager
def environment(**variables: str) -> Iterator[None]:
    """Inside the block `get_settings()` sees these variables (named as in `.env.example`).

    Request schemas and services read the process's settings, not an app's, so a
    test of a setting they apply changes the environment, as a deployment would.
    """
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            get_settings.cache_clear()
            yield
    finally:
        get_settings.cache_clear()
