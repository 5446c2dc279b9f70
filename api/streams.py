"""How many result streams one API process serves at once (`MAX_RESULT_STREAMS`).

A stream reads its batch in chunks, each on a pooled connection of its own for as long
as the chunk takes; without a cap, enough concurrent streams queue for the pool until
submits and polls time out waiting for a connection (503) and the streams themselves
are cut. Beyond the cap a client is told to come back shortly (429, `Retry-After`).
"""

import random
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request

from shared.errors import AppError

# Spread over a few seconds: clients refused in one wave would otherwise all come back
# in the same second, and again, as a herd.
RETRY_AFTER_S = (1, 3)


class TooManyStreams(AppError):
    """The API process serves `MAX_RESULT_STREAMS` streams already; retry after `Retry-After`."""

    status = 429
    code = "too_many_streams"
    title = "Too many result streams"


class StreamSlots:
    """A count of the streams in progress, against a limit; one process, one event loop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.taken = 0

    def take(self) -> None:
        if self.taken >= self.limit:
            raise TooManyStreams(
                f"This API process is serving its {self.limit} result streams "
                "(MAX_RESULT_STREAMS); retry after the time in Retry-After.",
                headers={"Retry-After": str(random.randint(*RETRY_AFTER_S))},
            )
        self.taken += 1

    def give_back(self) -> None:
        self.taken -= 1


async def hold_stream_slot(request: Request) -> AsyncIterator[None]:
    """A slot for as long as the request lasts: its exit runs once the stream has been sent."""
    slots: StreamSlots = request.app.state.result_streams
    slots.take()
    try:
        yield
    finally:
        slots.give_back()


StreamSlot = Annotated[None, Depends(hold_stream_slot)]
