"""`callback_url` at submit, and the deliveries of an audit's and a batch's events.

A callback that could not be called, or not signed, is refused before anything is written:
a malformed URL (422 `validation_error` at `body.callback_url`), a private host (422
`callback_url_not_allowed`, unless WEBHOOK_ALLOW_PRIVATE=true), no secret to sign with
(422 `webhooks_not_configured`).
"""

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from ipaddress import ip_address
from typing import Any

import pytest
from asgi_lifespan import LifespanManager
from httpx import ASGITransport, AsyncClient
from pydantic import SecretStr

from api.app import API_PREFIX, create_app
from shared.config import Settings
from shared.db import SessionFactory, SessionStatements, session_scope
from shared.tenants import service as tenants
from shared.webhooks.addresses import CallbackPolicy, IPAddress, system_resolve
from shared.webhooks.signing import new_secret
from tests.api.checks import assert_problem
from tests.api.conftest import NothingWritten
from tests.factories import audit_request, batch_request

SECRET = new_secret()
PUBLIC = "https://hooks.example.com/auditq"
Api = Callable[..., AbstractAsyncContextManager[AsyncClient]]


async def resolve(host: str, port: int) -> list[IPAddress]:
    """The test's DNS: `hooks.example.com` is public, `intranet.example.com` private, and
    `localhost` as the system has it."""
    if host == "localhost":
        return await system_resolve(host, port)
    known = {"hooks.example.com": "93.184.216.34", "intranet.example.com": "10.0.0.8"}
    if host not in known:
        raise OSError(f"unknown host {host}")
    return [ip_address(known[host])]


@pytest.fixture
def api(settings: Settings) -> Api:
    """`async with api(**settings) as client`: an app whose names resolve by `resolve`."""

    @asynccontextmanager
    async def build(**overrides: Any) -> AsyncIterator[AsyncClient]:
        app = create_app(
            settings.model_copy(update={"webhook_secret": SecretStr(SECRET), **overrides})
        )
        allow = app.state.settings.webhook_allow_private
        app.state.callback_policy = CallbackPolicy(allow_private=allow, resolve=resolve)
        async with LifespanManager(app):
            transport = ASGITransport(app=app)
            async with AsyncClient(
                transport=transport, base_url=f"http://test{API_PREFIX}"
            ) as client:
                yield client

    return build


def only_issue(body: dict[str, Any]) -> dict[str, Any]:
    issue: dict[str, Any]
    (issue,) = body["errors"]
    assert issue["loc"] == ["body", "callback_url"]
    return issue


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("ftp://hooks.example.com/x", "must be an absolute https URL"),
        ("javascript:alert(1)", "must be an absolute https URL"),
        ("/relative/path", "must be an absolute https URL"),
        ("https://user:pass@hooks.example.com/x", "must not carry credentials"),
        ("https://token@hooks.example.com/x", "must not carry credentials"),
        ("https://@hooks.example.com/x", "must not carry credentials"),
        ("https://hooks.example.com/a b", "must not contain whitespace"),
        ("https://hooks.example.com:99999/", "is not a valid URL"),
        ("https://" + "a" * 1990 + ".com/", "at most 2000 characters"),
    ],
)
async def test_a_malformed_callback_url_is_refused_with_what_to_fix(
    api: Api, nothing_written: NothingWritten, url: str, says: str
) -> None:
    async with api() as client:
        for path, body in [
            ("/audits", audit_request(callback_url=url)),
            ("/batches", batch_request(2, callback_url=url)),
        ]:
            refused = assert_problem(await client.post(path, json=body), 422, "validation_error")
            assert says in only_issue(refused)["msg"]
    await nothing_written()


async def test_plain_http_is_refused_unless_private_callbacks_are_allowed(api: Api) -> None:
    url = "http://hooks.example.com/auditq"
    async with api() as client:
        refused = await client.post("/audits", json=audit_request(callback_url=url))
    async with api(webhook_allow_private=True) as client:
        accepted = await client.post("/audits", json=audit_request(callback_url=url))

    issue = only_issue(assert_problem(refused, 422, "validation_error"))
    assert issue["msg"] == "must be https (http only where WEBHOOK_ALLOW_PRIVATE=true)"
    assert accepted.status_code == 202, accepted.text


@pytest.mark.parametrize(
    "host",
    [
        "127.0.0.1",
        "localhost",
        "2130706433",
        "0177.0.0.1",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "169.254.169.254",
        "intranet.example.com",
    ],
)
async def test_a_callback_to_a_private_host_is_refused_unless_allowed(
    api: Api, nothing_written: NothingWritten, host: str
) -> None:
    url = f"https://{host}/hooks"
    async with api() as client:
        single = await client.post("/audits", json=audit_request(callback_url=url))
        batch = await client.post("/batches", json=batch_request(2, callback_url=url))
    await nothing_written()
    async with api(webhook_allow_private=True) as client:
        allowed = await client.post("/audits", json=audit_request(callback_url=url))

    for refused in (single, batch):
        issue = only_issue(assert_problem(refused, 422, "callback_url_not_allowed"))
        assert "address; callbacks go to public addresses only" in issue["msg"]
        assert issue["type"] == "callback_url_not_allowed"
    assert allowed.status_code == 202, allowed.text
    assert allowed.json()["callback_url"] == url


async def test_a_host_that_does_not_resolve_is_refused(api: Api) -> None:
    async with api() as client:
        refused = await client.post(
            "/audits", json=audit_request(callback_url="https://nowhere.example.com/")
        )

    issue = only_issue(assert_problem(refused, 422, "callback_url_not_allowed"))
    assert issue["msg"].startswith("nowhere.example.com does not resolve")


async def test_a_public_callback_is_kept_and_shown(api: Api) -> None:
    async with api() as client:
        created = await client.post("/audits", json=audit_request(callback_url=PUBLIC))
        batch = await client.post(
            "/batches", json=batch_request(2, callback_url=PUBLIC, item_events=True)
        )
        plain = await client.post("/batches", json=batch_request(1, callback_url=PUBLIC))
        items = (await client.get(f"/audits?batch_id={batch.json()['id']}")).json()["items"]
        plain_items = (await client.get(f"/audits?batch_id={plain.json()['id']}")).json()

    assert created.status_code == 202, created.text
    assert created.json()["callback_url"] == PUBLIC
    assert (batch.json()["callback_url"], batch.json()["item_events"]) == (PUBLIC, True)
    # A batch's audits send their events where it does only with `item_events`.
    assert {item["callback_url"] for item in items} == {PUBLIC}
    assert {item["callback_url"] for item in plain_items["items"]} == {None}


async def test_a_rerun_sends_no_event_where_its_original_did(api: Api) -> None:
    async with api() as client:
        audit = (await client.post("/audits", json=audit_request(callback_url=PUBLIC))).json()
        batch = await client.post(
            "/batches", json=batch_request(2, callback_url=PUBLIC, item_events=True)
        )
        rerun = (await client.post(f"/audits/{audit['id']}/rerun")).json()
        batch_rerun = (await client.post(f"/batches/{batch.json()['id']}/rerun")).json()
        items = (await client.get(f"/audits?batch_id={batch_rerun['id']}")).json()["items"]

    assert rerun["callback_url"] is None
    assert (batch_rerun["callback_url"], batch_rerun["item_events"]) == (None, False)
    assert [item["callback_url"] for item in items] == [None, None]


async def test_without_a_secret_to_sign_with_a_callback_is_refused(
    api: Api, session_factory: SessionFactory, nothing_written: NothingWritten
) -> None:
    async with api(webhook_secret=None) as client:
        refused = await client.post("/audits", json=audit_request(callback_url=PUBLIC))
        await nothing_written()
        without = await client.post("/audits", json=audit_request())

    body = assert_problem(refused, 422, "webhooks_not_configured")
    assert "WEBHOOK_SECRET" in body["detail"]
    assert "auditq tenant set default --webhook-secret" in body["detail"]
    assert without.status_code == 202

    # A secret of the tenant's own is enough.
    async with session_scope(session_factory) as session:
        await tenants.set_tenant(
            SessionStatements(session), "default", {"webhook_secret": new_secret()}
        )
    async with api(webhook_secret=None) as client:
        accepted = await client.post("/audits", json=audit_request(callback_url=PUBLIC))
    assert accepted.status_code == 202, accepted.text


async def test_a_batch_s_audits_take_no_callback_of_their_own(api: Api) -> None:
    body = batch_request(2)
    body["audits"][1]["callback_url"] = PUBLIC
    async with api() as client:
        item = await client.post("/batches", json=body)
        no_url = await client.post("/batches", json=batch_request(2, item_events=True))

    issue = assert_problem(item, 422, "validation_error")["errors"][0]
    assert issue["loc"] == ["body", "audits", 1, "callback_url"]
    assert "Value error, `item_events` needs `callback_url`" in str(no_url.json()["errors"])


# Deliveries


async def test_an_audit_s_deliveries_list_its_events_newest_first_page_by_page(
    api: Api,
) -> None:
    async with api() as client:
        audit_id = (await client.post("/audits", json=audit_request(callback_url=PUBLIC))).json()[
            "id"
        ]
        before = (await client.get(f"/audits/{audit_id}/deliveries")).json()
        await client.post(f"/audits/{audit_id}/cancel")
        await client.post(f"/audits/{audit_id}/retry")
        await client.post(f"/audits/{audit_id}/cancel")  # a second end, a second event
        first = (await client.get(f"/audits/{audit_id}/deliveries?limit=1")).json()
        second = (
            await client.get(f"/audits/{audit_id}/deliveries?limit=1&cursor={first['next_cursor']}")
        ).json()
        tampered = await client.get(f"/batches/{audit_id}/deliveries?cursor=x")

    assert before == {"items": [], "next_cursor": None}
    assert second["next_cursor"] is None
    events = [*first["items"], *second["items"]]
    assert [e["type"] for e in events] == ["audit.cancelled", "audit.cancelled"]
    assert events[0]["created_at"] > events[1]["created_at"]
    for event in events:  # not yet tried: no worker runs here
        assert (event["status"], event["url"], event["attempts"]) == ("pending", PUBLIC, [])
        assert event["next_attempt_at"] is not None
    assert tampered.status_code == 404  # not a batch


async def test_a_batch_s_deliveries_list_its_own_events(api: Api) -> None:
    async with api() as client:
        batch_id = (
            await client.post("/batches", json=batch_request(2, callback_url=PUBLIC))
        ).json()["id"]
        await client.post(f"/batches/{batch_id}/cancel")
        listed = (await client.get(f"/batches/{batch_id}/deliveries")).json()
        unknown = await client.get("/batches/00000000-0000-4000-8000-000000000000/deliveries")

    (event,) = listed["items"]
    assert (event["type"], event["status"]) == ("batch.cancelled", "pending")
    assert_problem(unknown, 404, "batch_not_found")


async def test_the_problem_codes_are_documented(client: AsyncClient) -> None:
    for code in ("callback_url_not_allowed", "webhooks_not_configured"):
        described = await client.get(f"http://test/problems/{code}")
        assert described.status_code == 200, described.text
        assert described.json()["status"] == [422]
