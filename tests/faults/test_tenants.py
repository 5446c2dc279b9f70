"""Keys across API processes: two `web` processes of the Procfile, keys made and revoked
with the real `auditq key` command, as ops would.

A revoked key must be refused from its next request on by every process, though each
process caches the keys it has seen (shared/tenants/directory.py).
"""

from pathlib import Path

import httpx
import pytest

from tests.faults.scenario import stack_env
from tests.faults.services import OwnRedis
from tests.faults.stack import Api, Stack, auditq_command
from tests.fixtures.processes import simulator_process

pytestmark = pytest.mark.slow

AUDIT = {"subject": "s", "content": "c", "criteria": [{"id": "a", "description": "d"}]}


def auditq(database_url: str, *args: str) -> str:
    return auditq_command({"DATABASE_URL": database_url}, *args)


def status_of(api: Api, key: str) -> int:
    response = httpx.get(
        f"{api.base_url}/audits", headers={"Authorization": f"Bearer {key}"}, timeout=10
    )
    return response.status_code


async def test_a_revoked_key_is_refused_by_every_process_from_its_next_request(
    tmp_path: Path, scratch_db: str, own_redis: OwnRedis, stacks: list[Stack]
) -> None:
    with simulator_process(tmp_path) as sim:
        env = stack_env(database_url=scratch_db, redis_url=own_redis.url, simulator=sim)
        stack = Stack({**env, "AUTH": "keys"}, tmp_path)
        stacks.append(stack)
        apis = [await stack.start_web(), await stack.start_web()]
        key = auditq(scratch_db, "key", "create", "--tenant", "acme").splitlines()[-1]
        kept = auditq(scratch_db, "key", "create", "--tenant", "acme").splitlines()[-1]

        # Both processes have looked the key up, and cache it.
        assert [status_of(api, key) for api in apis * 2] == [200] * 4

        auditq(scratch_db, "key", "revoke", key)

        assert [status_of(api, key) for api in apis] == [401, 401]
        assert [status_of(api, kept) for api in apis] == [200, 200]
        listed = auditq(scratch_db, "key", "list", "--tenant", "acme")
        assert key not in listed
        assert kept not in listed
        assert key[:11] in listed
