"""The Procfile's `web` with `WEB_CONCURRENCY=2`: two uvicorn processes on one port, as one API.

What each process keeps to itself must not show: a scrape of `/metrics` counts the
requests of both, whichever answers; a cursor one signed is good at the other (no
`SECRET_KEY` is set: they share a random one); a key revoked with `auditq key revoke`
is refused by both from its next request (each caches keys, each LISTENs).
"""

import asyncio
import os
from pathlib import Path

import httpx
import psutil
import pytest

from tests.api.test_metrics import samples
from tests.factories import audit_request
from tests.faults.services import OwnRedis
from tests.faults.stack import Api, Stack, auditq_command

pytestmark = pytest.mark.slow

PROCESSES = 2
PAGE = 5


def uvicorn_processes(api: Api) -> list[psutil.Process]:
    """The processes serving the port: the children uvicorn spawned."""
    children = psutil.Process(api.process.pid).children()
    return [child for child in children if "spawn_main" in " ".join(child.cmdline())]


def processes_counted(api: Api) -> set[int]:
    """The processes that have counted a request: their files in the metrics directory."""
    [directory] = {child.environ()["PROMETHEUS_MULTIPROC_DIR"] for child in uvicorn_processes(api)}
    names = os.listdir(directory)
    return {int(name.removesuffix(".db").rpartition("_")[2]) for name in names}


async def submit(api: Api, headers: dict[str, str]) -> str:
    """One audit, on a connection of its own (so either process may take it)."""
    async with httpx.AsyncClient(base_url=api.base_url, headers=headers, timeout=30) as http:
        response = await http.post("/audits", json=audit_request())
    assert response.status_code == 202, response.text
    audit_id: str = response.json()["id"]
    return audit_id


async def submit_until_both_counted(api: Api, headers: dict[str, str]) -> list[str]:
    """Audits, ten at a time, until both processes have taken some."""
    pids = {process.pid for process in uvicorn_processes(api)}
    submitted: list[str] = []
    while processes_counted(api) != pids:
        assert len(submitted) < 200, f"one process took every connection: {submitted}"
        submitted += await asyncio.gather(*(submit(api, headers) for _ in range(10)))
    return submitted


def walk_pages(api: Api, headers: dict[str, str]) -> list[str]:
    """Every audit through `GET /audits`, each page on a new connection."""
    ids: list[str] = []
    cursor: str | None = None
    while True:
        params = {"limit": str(PAGE), **({"cursor": cursor} if cursor else {})}
        response = httpx.get(f"{api.base_url}/audits", params=params, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        ids += [item["id"] for item in response.json()["items"]]
        if (cursor := response.json()["next_cursor"]) is None:
            return ids


def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return samples(httpx.get(f"{api.root_url}/metrics", timeout=10).text)


def status_of(api: Api, headers: dict[str, str]) -> int:
    return httpx.get(f"{api.base_url}/audits", headers=headers, timeout=10).status_code


async def test_two_web_processes_on_one_port_serve_as_one_api(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    env = {
        "DATABASE_URL": scratch_db,
        "REDIS_URL": own_redis.url,
        "QUEUE_NAME": "auditq:web-concurrency",
        "WEB_CONCURRENCY": str(PROCESSES),
        "AUTH": "keys",
    }
    key = auditq_command(env, "key", "create", "--tenant", "acme").splitlines()[-1]
    headers = {"Authorization": f"Bearer {key}"}
    stack = Stack(env, tmp_path)
    stacks.append(stack)
    api = await stack.start_web()
    assert len(uvicorn_processes(api)) == PROCESSES

    submitted = await submit_until_both_counted(api, headers)

    for _ in range(2 * PROCESSES):  # scrapes land on either process: the same totals
        scraped = scrape(api)
        posts = (("method", "POST"), ("route", "/api/v1/audits"), ("status", "202"))
        assert scraped["auditq_http_requests_total", posts] == len(submitted)
        depth = (("priority", "interactive"), ("tenant", "acme"))
        assert scraped["auditq_queue_depth", depth] == len(submitted)
    assert sorted(walk_pages(api, headers)) == sorted(submitted)

    auditq_command(env, "key", "revoke", key)
    assert [status_of(api, headers) for _ in range(4 * PROCESSES)] == [401] * 4 * PROCESSES
