"""Tenants over HTTP (`AUTH=keys`): every route keeps each tenant to its own.

The isolation checks are keyed by the app's route table itself: a new route without
one fails `test_every_route_has_an_isolation_check`.
"""

import hmac
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import ASGITransport, AsyncClient

from api.app import API_PREFIX, create_app
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope
from shared.tenants import keys, service
from shared.tenants.caller import Role
from shared.tenants.directory import Directory
from tests.api.checks import assert_problem, until_listening, until_notified
from tests.factories import audit_request, batch_request, rubric_request


@dataclass
class Tenants:
    """One app with `AUTH=keys`, and a client for each key: two tenants and an admin."""

    app: FastAPI
    alice: AsyncClient  # tenant `acme`
    bob: AsyncClient  # tenant `globex`
    admin: AsyncClient  # tenant `ops`, admin
    anonymous: AsyncClient


async def new_key(factory: SessionFactory, tenant: str, role: Role = Role.MEMBER) -> str:
    async with session_scope(factory) as session:
        created = await service.create_key(
            SessionStatements(session), tenant=tenant, label=None, role=role
        )
    return created.secret


@pytest.fixture
async def tenants(
    settings: Settings, session_factory: SessionFactory, clean: None
) -> AsyncIterator[Tenants]:
    keys = [
        await new_key(session_factory, "acme"),
        await new_key(session_factory, "globex"),
        await new_key(session_factory, "ops", Role.ADMIN),
        None,
    ]
    app = create_app(settings.model_copy(update={"auth": "keys"}))
    async with LifespanManager(app):
        await until_listening(app.state.directory)
        transport = ASGITransport(app=app)
        clients = [
            AsyncClient(
                transport=transport,
                base_url=f"http://test{API_PREFIX}",
                headers={"Authorization": f"Bearer {key}"} if key else {},
            )
            for key in keys
        ]
        yield Tenants(app, *clients)
        for client in clients:
            await client.aclose()


# --- Every route, as another tenant --------------------------------------------------

Check = Callable[[Tenants], Awaitable[None]]


async def _alices_audit(t: Tenants, *, cancelled: bool = False) -> str:
    created = await t.alice.post("/audits", json=audit_request())
    assert created.status_code == 202, created.text
    audit_id: str = created.json()["id"]
    if cancelled:
        assert (await t.alice.post(f"/audits/{audit_id}/cancel")).status_code == 200
    return audit_id


async def _alices_batch(t: Tenants) -> str:
    created = await t.alice.post("/batches", json=batch_request(2))
    assert created.status_code == 202, created.text
    batch_id: str = created.json()["id"]
    return batch_id


async def submit_with_the_same_idempotency_key(t: Tenants) -> None:
    headers = {"Idempotency-Key": "nightly-1"}
    mine = await t.alice.post("/audits", json=audit_request(), headers=headers)
    theirs = await t.bob.post("/audits", json=audit_request(), headers=headers)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    assert (mine.json()["tenant"], theirs.json()["tenant"]) == ("acme", "globex")
    assert "Idempotent-Replayed" not in theirs.headers


async def read_another_tenants_audit(t: Tenants) -> None:
    audit_id = await _alices_audit(t)
    assert_problem(await t.bob.get(f"/audits/{audit_id}"), 404, "audit_not_found")
    assert (await t.alice.get(f"/audits/{audit_id}")).status_code == 200


async def list_audits(t: Tenants) -> None:
    audit_id = await _alices_audit(t)
    for query in ("", "?tenant=acme"):  # a member's `?tenant=` changes nothing
        listed = (await t.bob.get(f"/audits{query}")).json()["items"]
        assert audit_id not in {a["id"] for a in listed}
    assert audit_id in {a["id"] for a in (await t.alice.get("/audits")).json()["items"]}


async def cancel_another_tenants_audit(t: Tenants) -> None:
    audit_id = await _alices_audit(t)
    assert_problem(await t.bob.post(f"/audits/{audit_id}/cancel"), 404, "audit_not_found")
    assert (await t.alice.get(f"/audits/{audit_id}")).json()["status"] == "queued"


async def retry_another_tenants_audit(t: Tenants) -> None:
    audit_id = await _alices_audit(t, cancelled=True)
    assert_problem(await t.bob.post(f"/audits/{audit_id}/retry"), 404, "audit_not_found")
    assert (await t.alice.get(f"/audits/{audit_id}")).json()["status"] == "cancelled"


async def rerun_another_tenants_audit(t: Tenants) -> None:
    audit_id = await _alices_audit(t)
    assert_problem(await t.bob.post(f"/audits/{audit_id}/rerun"), 404, "audit_not_found")
    assert (await t.alice.get("/audits")).json()["items"][0]["id"] == audit_id
    # An admin's rerun belongs to the audit's tenant, whose rubric and quota it uses.
    rerun = await t.admin.post(f"/audits/{audit_id}/rerun")
    assert rerun.status_code == 202, rerun.text
    assert (rerun.json()["tenant"], rerun.json()["rerun_of"]) == ("acme", audit_id)


async def read_another_tenants_audit_deliveries(t: Tenants) -> None:
    audit_id = await _alices_audit(t, cancelled=True)
    deliveries = f"/audits/{audit_id}/deliveries"
    assert_problem(await t.bob.get(deliveries), 404, "audit_not_found")
    assert (await t.alice.get(deliveries)).json() == {"items": [], "next_cursor": None}


async def submit_a_batch_with_the_same_idempotency_key(t: Tenants) -> None:
    headers = {"Idempotency-Key": "nightly-1"}
    mine = await t.alice.post("/batches", json=batch_request(2), headers=headers)
    theirs = await t.bob.post("/batches", json=batch_request(2), headers=headers)
    assert (mine.status_code, theirs.status_code) == (202, 202)
    assert mine.json()["id"] != theirs.json()["id"]
    assert theirs.json()["tenant"] == "globex"


async def read_another_tenants_batch(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    assert_problem(await t.bob.get(f"/batches/{batch_id}"), 404, "batch_not_found")


async def list_batches(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    listed = (await t.bob.get("/batches?tenant=acme")).json()["items"]
    assert batch_id not in {b["id"] for b in listed}
    assert batch_id in {b["id"] for b in (await t.alice.get("/batches")).json()["items"]}


async def read_another_tenants_results(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    assert_problem(await t.bob.get(f"/batches/{batch_id}/results"), 404, "batch_not_found")


async def read_another_tenants_batch_deliveries(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    deliveries = f"/batches/{batch_id}/deliveries"
    assert_problem(await t.bob.get(deliveries), 404, "batch_not_found")
    assert (await t.alice.get(deliveries)).status_code == 200


async def cancel_another_tenants_batch(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    assert_problem(await t.bob.post(f"/batches/{batch_id}/cancel"), 404, "batch_not_found")
    assert (await t.alice.get(f"/batches/{batch_id}")).json()["counts"]["queued"] == 2


async def retry_another_tenants_batch(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    assert (await t.alice.post(f"/batches/{batch_id}/cancel")).status_code == 200
    retried = await t.bob.post(f"/batches/{batch_id}/retry?include=cancelled")
    assert_problem(retried, 404, "batch_not_found")
    assert (await t.alice.get(f"/batches/{batch_id}")).json()["counts"]["cancelled"] == 2


async def rerun_another_tenants_batch(t: Tenants) -> None:
    batch_id = await _alices_batch(t)
    assert_problem(await t.bob.post(f"/batches/{batch_id}/rerun"), 404, "batch_not_found")
    assert [b["id"] for b in (await t.alice.get("/batches")).json()["items"]] == [batch_id]


async def publish_the_same_rubric_name(t: Tenants) -> None:
    mine = await t.alice.post("/rubrics", json=rubric_request("house-rules"))
    theirs = await t.bob.post("/rubrics", json=rubric_request("house-rules"))
    assert [r.json()["version"] for r in (mine, theirs)] == [1, 1]
    assert [r.json()["tenant"] for r in (mine, theirs)] == ["acme", "globex"]
    # Each tenant's audits run with its own version 1.
    audit = await t.bob.post("/audits", json=audit_request(criteria=None, rubric="house-rules"))
    assert audit.status_code == 202, audit.text


async def list_rubrics(t: Tenants) -> None:
    await t.alice.post("/rubrics", json=rubric_request("acme-only"))
    for query in ("", "?tenant=acme"):
        names = {r["name"] for r in (await t.bob.get(f"/rubrics{query}")).json()["items"]}
        assert "acme-only" not in names


async def read_another_tenants_rubric(t: Tenants) -> None:
    await t.alice.post("/rubrics", json=rubric_request("acme-only"))
    assert_problem(await t.bob.get("/rubrics/acme-only"), 404, "rubric_not_found")
    refused = await t.bob.post("/audits", json=audit_request(criteria=None, rubric="acme-only"))
    assert_problem(refused, 422, "rubric_not_found")


async def read_the_status_as_a_member(t: Tenants) -> None:
    assert_problem(await t.alice.get("/status"), 403, "forbidden")
    assert (await t.admin.get("/status")).status_code == 200


ISOLATION: dict[tuple[str, str], Check] = {
    ("POST", "/audits"): submit_with_the_same_idempotency_key,
    ("GET", "/audits/{audit_id}"): read_another_tenants_audit,
    ("GET", "/audits"): list_audits,
    ("POST", "/audits/{audit_id}/cancel"): cancel_another_tenants_audit,
    ("POST", "/audits/{audit_id}/retry"): retry_another_tenants_audit,
    ("POST", "/audits/{audit_id}/rerun"): rerun_another_tenants_audit,
    ("GET", "/audits/{audit_id}/deliveries"): read_another_tenants_audit_deliveries,
    ("POST", "/batches"): submit_a_batch_with_the_same_idempotency_key,
    ("GET", "/batches/{batch_id}"): read_another_tenants_batch,
    ("GET", "/batches"): list_batches,
    ("GET", "/batches/{batch_id}/results"): read_another_tenants_results,
    ("POST", "/batches/{batch_id}/cancel"): cancel_another_tenants_batch,
    ("POST", "/batches/{batch_id}/retry"): retry_another_tenants_batch,
    ("POST", "/batches/{batch_id}/rerun"): rerun_another_tenants_batch,
    ("GET", "/batches/{batch_id}/deliveries"): read_another_tenants_batch_deliveries,
    ("POST", "/rubrics"): publish_the_same_rubric_name,
    ("GET", "/rubrics"): list_rubrics,
    ("GET", "/rubrics/{name}"): read_another_tenants_rubric,
    ("GET", "/status"): read_the_status_as_a_member,
}
# Open to anyone, and owning nothing.
OPEN = {("GET", "/health/live"), ("GET", "/health/ready")}


def api_routes(app: FastAPI) -> set[tuple[str, str]]:
    """Every operation of the API, as its OpenAPI document lists them."""
    return {
        (method.upper(), path.removeprefix(API_PREFIX))
        for path, operations in app.openapi()["paths"].items()
        for method in operations
    }


def test_every_route_has_an_isolation_check(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"auth": "keys"}))
    assert api_routes(app) - OPEN == set(ISOLATION), "add the new route to ISOLATION"


@pytest.mark.parametrize("route", ISOLATION, ids=[" ".join(r) for r in ISOLATION])
async def test_another_tenant_reaches_nothing(tenants: Tenants, route: tuple[str, str]) -> None:
    await ISOLATION[route](tenants)


@pytest.mark.parametrize("route", ISOLATION, ids=[" ".join(r) for r in ISOLATION])
async def test_every_route_wants_a_key(tenants: Tenants, route: tuple[str, str]) -> None:
    method, path = route
    concrete = path.format(
        audit_id="0" * 8 + "-0000-4000-8000-" + "0" * 12,
        batch_id="0" * 8 + "-0000-4000-8000-" + "0" * 12,
        name="house-rules",
    )
    response = await tenants.anonymous.request(method, concrete, json={})
    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"] == "Bearer"


# --- Admins ---------------------------------------------------------------------------


async def test_an_admin_reaches_every_tenant_and_filters_lists(tenants: Tenants) -> None:
    audit_id = await _alices_audit(tenants)
    await tenants.bob.post("/audits", json=audit_request())

    assert (await tenants.admin.get(f"/audits/{audit_id}")).json()["tenant"] == "acme"
    everyone = (await tenants.admin.get("/audits")).json()["items"]
    assert {a["tenant"] for a in everyone} == {"acme", "globex"}
    only_acme = (await tenants.admin.get("/audits?tenant=acme")).json()["items"]
    assert [a["id"] for a in only_acme] == [audit_id]
    assert (await tenants.admin.post(f"/audits/{audit_id}/cancel")).status_code == 200
    # What an admin creates is its own tenant's.
    created = await tenants.admin.post("/audits", json=audit_request())
    assert created.json()["tenant"] == "ops"


async def test_an_admins_rubric_reads_name_a_tenant(tenants: Tenants) -> None:
    await tenants.alice.post("/rubrics", json=rubric_request("acme-only"))

    assert_problem(await tenants.admin.get("/rubrics/acme-only"), 404, "rubric_not_found")
    found = await tenants.admin.get("/rubrics/acme-only?tenant=acme")
    assert found.json()["tenant"] == "acme"


# --- Keys -------------------------------------------------------------------------------


async def test_a_revoked_key_is_refused_from_its_next_request(
    tenants: Tenants, session_factory: SessionFactory
) -> None:
    assert (await tenants.alice.get("/audits")).status_code == 200  # now cached
    directory: Directory = tenants.app.state.directory
    before = directory.generation
    key = tenants.alice.headers["Authorization"].removeprefix("Bearer ")

    async with session_scope(session_factory) as session:
        await service.revoke_key(SessionStatements(session), key)
    await until_notified(directory, since=before)

    assert_problem(await tenants.alice.get("/audits"), 401, "unauthorized")
    assert (await tenants.bob.get("/audits")).status_code == 200


async def test_a_key_is_recorded_as_used(tenants: Tenants, session_factory: SessionFactory) -> None:
    from shared.tenants import repository

    await tenants.bob.get("/audits")

    async with session_scope(session_factory) as session:
        keys = await repository.keys(SessionStatements(session), tenant="globex")
    assert [k.last_used_at is not None for k in keys] == [True]


@pytest.mark.parametrize("header", ["Bearer aq_" + "x" * 43, "Bearer ", "Basic YWxhZGRpbg=="])
async def test_an_unknown_key_is_refused(tenants: Tenants, header: str) -> None:
    response = await tenants.anonymous.get("/audits", headers={"Authorization": header})
    assert_problem(response, 401, "unauthorized")


@pytest.mark.parametrize("path", ["/audits", "/batches", "/rubrics", "/rubrics/house-rules"])
@pytest.mark.parametrize("tenant", ["%00", "ACME", "a" * 65, "a/b"])
async def test_a_tenant_filter_that_names_no_tenant_is_a_422(
    tenants: Tenants, path: str, tenant: str
) -> None:
    response = await tenants.admin.get(f"{path}?tenant={tenant}")
    assert_problem(response, 422, "validation_error")


async def test_the_presented_key_is_compared_in_constant_time(
    tenants: Tenants, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The row is found by the key's digest; the digests are then compared with
    `hmac.compare_digest`, on every request, cached or not."""
    compared: list[bytes] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append(a)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = tenants.bob.headers["Authorization"].removeprefix("Bearer ")

    for _ in range(2):
        assert (await tenants.bob.get("/audits")).status_code == 200

    assert compared == [keys.digest(key).encode()] * 2
