"""Result streams under pressure: bounded per process, never cut short silently, resumable.

The probe behind these tests: 190 clients looping `GET /batches/{id}/results` on a
1,000-audit batch took every pooled connection, so other routes answered 503
`database_unavailable` (the pool was exhausted; PostgreSQL was fine) and 133 streams
were cut mid-body. Here the streams' queries are held up by a lock, as a slow database
or a flood of streams would hold them, and the app is asked for more streams than its
pool has connections (the fault suite runs the probe's full figures, against processes).
"""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest
import sqlalchemy.exc
from httpx import AsyncClient, Response

from shared.batches import results
from shared.batches import service as batches_service
from shared.db import asyncpg_dsn
from tests.api.checks import assert_problem
from tests.api.conftest import ClientFactory
from tests.api.test_batches import audit_ids, ndjson, submit_batch
from tests.factories import batch_request

CAP = 4
STREAMS = 30  # more than the API's pool of 20 connections
WITHIN_S = 60.0  # a bound for a hang, not a measure of speed


@asynccontextmanager
async def audit_table_locked(database_url: str) -> AsyncIterator[None]:
    """Every query on `audit` waits until the block ends (ACCESS EXCLUSIVE lock)."""
    connection = await asyncpg.connect(asyncpg_dsn(database_url))
    try:
        async with connection.transaction():
            await connection.execute("LOCK TABLE audit IN ACCESS EXCLUSIVE MODE")
            yield
    finally:
        await connection.close()


async def until_done(tasks: list["asyncio.Task[Response]"], count: int) -> list[Response]:
    """The first `count` answers; fails if fewer arrive within WITHIN_S."""
    finished: list[Response] = []
    async with asyncio.timeout(WITHIN_S):
        for next_done in asyncio.as_completed(tasks):
            finished.append(await next_done)
            if len(finished) == count:
                return finished
    raise AssertionError(f"only {len(finished)} answers")


async def test_streams_beyond_the_cap_wait_their_turn_and_other_routes_keep_connections(
    client_with: ClientFactory, database_url: str
) -> None:
    async with client_with(max_result_streams=CAP) as client:
        batch = await submit_batch(client, batch_request(1000))
        path = f"/batches/{batch['id']}/results"

        async with audit_table_locked(database_url):
            streams = [asyncio.create_task(client.get(path)) for _ in range(STREAMS)]
            refused = await until_done(streams, STREAMS - CAP)
            other_route = await client.get("/rubrics")
        answered = await asyncio.gather(*streams)
        after_them = await client.get(path)

    for response in refused:
        problem = assert_problem(response, 429, "too_many_streams")
        assert response.headers["retry-after"] in {"1", "2", "3"}
        assert "MAX_RESULT_STREAMS" in problem["detail"]
    assert other_route.status_code == 200, other_route.text
    complete = [r for r in answered if r.status_code == 200]
    assert len(complete) == CAP
    for response in [*complete, after_them]:
        assert [line["subject"] for line in ndjson(response.text)] == [
            f"Page {i}" for i in range(1000)
        ]


def fail_after(calls: int) -> Any:
    """`results_after`, failing from its `calls + 1`-th call as an exhausted pool fails."""
    real = batches_service.results_after
    made = 0

    async def results_after(*args: Any, **kwargs: Any) -> Any:
        nonlocal made
        made += 1
        if made > calls:
            raise sqlalchemy.exc.TimeoutError("QueuePool limit of size 20 overflow 0 reached")
        return await real(*args, **kwargs)

    return results_after


async def test_a_stream_cut_short_says_where_to_resume_and_after_resumes_there(
    client: AsyncClient, engine: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = await submit_batch(client, batch_request(1000))
    path = f"/batches/{batch['id']}/results"
    monkeypatch.setattr(results, "results_after", fail_after(calls=1))

    cut = ndjson((await client.get(path)).text)
    monkeypatch.undo()
    *sent, last = cut
    resumed = ndjson((await client.get(path, params={"after": last["after"]})).text)

    assert len(sent) == 2 * results.CHUNK  # the route's own chunk, then one more
    assert last["code"] == "results_interrupted"
    assert "id" not in last
    assert last["after"] == sent[-1]["id"]
    assert f"?after={sent[-1]['id']}" in last["detail"]
    every_id = await audit_ids(engine, batch["id"])
    assert [line["id"] for line in [*sent, *resumed]] == every_id


async def test_after_the_last_audit_nothing_is_left_and_a_stranger_is_422(
    client: AsyncClient,
) -> None:
    batch = await submit_batch(client, batch_request(3))
    other = await submit_batch(client, batch_request(1))
    path = f"/batches/{batch['id']}/results"
    lines = ndjson((await client.get(path)).text)

    rest = await client.get(path, params={"after": lines[0]["id"]})
    nothing = await client.get(path, params={"after": lines[-1]["id"]})
    stranger_id = ndjson((await client.get(f"/batches/{other['id']}/results")).text)[0]["id"]
    stranger = await client.get(path, params={"after": stranger_id})

    assert [line["id"] for line in ndjson(rest.text)] == [line["id"] for line in lines[1:]]
    assert (nothing.status_code, nothing.text) == (200, "")
    assert_problem(stranger, 422, "audit_not_in_batch")
