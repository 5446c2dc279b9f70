"""`auditq status` against the real API over loopback HTTP, on a seeded fleet."""

import asyncio
import json
import re

from arq.connections import ArqRedis
from sqlalchemy.ext.asyncio import AsyncEngine
from typer.testing import CliRunner

from cli.fleet_view import duration
from cli.main import app
from shared.config import Settings
from shared.db import SessionFactory
from shared.tenants.caller import Role
from tests.api.test_tenants import new_key
from tests.cli.conftest import Auditq
from tests.fixtures.fleet import seed_fleet, truth
from tests.fixtures.serving import serving


def _figure(stdout: str, name: str) -> str:
    """The text after `name` on its line of the figures."""
    match = re.search(rf"^{name}\s+(.+)$", stdout, re.MULTILINE)
    assert match, stdout
    return match.group(1).rstrip()


async def test_status_prints_the_fleets_figures(
    auditq: Auditq,
    session_factory: SessionFactory,
    engine: AsyncEngine,
    redis: ArqRedis,
    settings: Settings,
) -> None:
    await seed_fleet(session_factory, redis, settings.queue_name)
    expected = await truth(engine)

    result = await auditq("status")

    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert _figure(out, "queued").startswith(f"{sum(expected.queued.values())}  oldest 6 min")
    assert _figure(out, "running").startswith(f"{expected.running}  1 batch in")
    assert _figure(out, "workers alive").startswith("2  heartbeat")
    recent = expected.finished_5_minutes
    assert _figure(out, "last 5 min") == (
        f"{sum(recent.values())}  finished, {sum(recent.values()) / 5:.1f}/min · "
        f"{recent.get('succeeded', 0)} succeeded · {recent['failed']} failed · "
        f"{recent.get('cancelled', 0)} cancelled"
    )
    failures = out.split("Failed audits by error code")[1]
    rows = re.findall(r"│ (\w+)\s+│\s+(\d+) │\s+(\d+) │ [0-9a-f-]{36} │", failures)
    assert {code: int(hour) for code, hour, _ in rows} == expected.failed_hour_by_code
    assert ("rate_limited", "3", "2") in rows
    for (tenant, priority), queued in expected.queued.items():
        assert re.search(rf"│ {tenant}\s+│", out), (tenant, priority, queued)


async def test_status_as_json_is_the_api_document(
    auditq: Auditq, session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> None:
    await seed_fleet(session_factory, redis, settings.queue_name)

    result = await auditq("status", "--json")

    assert result.exit_code == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["queue"]["queued"] == 6
    assert document["workers_alive"] == 2


async def test_an_empty_fleet_says_so(auditq: Auditq) -> None:
    result = await auditq("status")

    assert result.exit_code == 0, result.stderr
    assert _figure(result.stdout, "queued") == "0  none waiting"
    assert "workers alive  0" in result.stdout
    assert "Failed audits" not in result.stdout


async def test_a_member_key_is_told_to_use_an_admin_key(
    settings: Settings, session_factory: SessionFactory
) -> None:
    member = await new_key(session_factory, "acme", Role.MEMBER)
    args = ["status", "--api-url"]
    with serving(settings.model_copy(update={"auth": "keys"})) as url:
        result = await asyncio.to_thread(
            CliRunner().invoke, app, [*args, url], env={"AUDITQ_API_KEY": member}
        )

    assert result.exit_code == 2
    assert "forbidden: " in result.stderr
    assert "auditq key create --tenant NAME --admin" in result.stderr


def test_durations_read_as_people_say_them() -> None:
    assert [duration(s) for s in (0, 42.4, 192, 7500)] == ["0 s", "42 s", "3 min 12 s", "2 h 5 min"]
