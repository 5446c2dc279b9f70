"""`/dashboard` over HTTP: the page, its assets, and signing in with a cookie.

What the page shows is tested in a real browser (tests/api/test_dashboard_browser.py).
"""

from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from httpx import AsyncClient

from shared.db import SessionFactory
from shared.tenants.caller import Role
from tests.api.checks import assert_problem
from tests.api.conftest import ClientFactory
from tests.api.test_tenants import new_key
from tests.factories import audit_request

COOKIE = "auditq_key"


@pytest.mark.parametrize("path", ["/dashboard", "/dashboard/audits/anything"])
async def test_the_page_is_served_with_a_policy_of_this_origin_only(
    client: AsyncClient, path: str
) -> None:
    response = await client.get(f"http://test{path}")

    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    policy = response.headers["content-security-policy"]
    assert "default-src 'none'" in policy
    assert "script-src 'self'" in policy
    assert '<meta name="auditq-auth" content="none">' in response.text
    assert "//" not in response.text  # no outside host, no protocol-relative URL


@pytest.mark.parametrize(
    ("name", "media_type"),
    [("dashboard.js", "text/javascript"), ("dashboard.css", "text/css")],
)
async def test_the_assets_come_from_the_package(
    client: AsyncClient, name: str, media_type: str
) -> None:
    response = await client.get(f"http://test/dashboard/assets/{name}")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert len(response.content) > 1000


@pytest.mark.parametrize("name", ["index.html", "..%2Fpages.py", "nope.js"])
async def test_nothing_else_is_an_asset(client: AsyncClient, name: str) -> None:
    assert (await client.get(f"http://test/dashboard/assets/{name}")).status_code == 404


async def test_the_page_answers_only_the_allowed_hosts(client_with: ClientFactory) -> None:
    async with client_with(allowed_hosts=["ops.example.com"]) as client:
        allowed = await client.get("http://ops.example.com/dashboard")
        other = await client.get("http://elsewhere.example.com/dashboard")

    assert allowed.status_code == 200
    assert_problem(other, 400, "invalid_host")


# --- Signing in (AUTH=keys) -------------------------------------------------------------


@dataclass
class Keyed:
    client: AsyncClient
    admin: str
    member: str


@pytest.fixture
async def keyed(
    client_with: ClientFactory, session_factory: SessionFactory
) -> AsyncIterator[Keyed]:
    admin = await new_key(session_factory, "ops", Role.ADMIN)
    member = await new_key(session_factory, "acme")
    async with client_with(auth="keys") as client:
        yield Keyed(client, admin, member)


async def test_an_admin_key_is_kept_in_an_http_only_strict_cookie(keyed: Keyed) -> None:
    response = await keyed.client.post("http://test/dashboard/session", data={"key": keyed.admin})

    assert response.status_code == 204
    cookie = response.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}={keyed.admin};")
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes
    assert "secure" not in attributes  # plain HTTP here; over HTTPS it is Secure
    assert not [a for a in attributes if a.startswith(("max-age", "expires"))]  # a session's


async def test_the_cookie_is_secure_over_https(keyed: Keyed) -> None:
    response = await keyed.client.post("https://test/dashboard/session", data={"key": keyed.admin})

    assert "secure" in response.headers["set-cookie"].lower()


async def test_the_cookie_reads_but_never_writes(keyed: Keyed) -> None:
    keyed.client.cookies.set(COOKIE, keyed.admin)

    assert (await keyed.client.get("/status")).status_code == 200
    assert (await keyed.client.get("/audits")).status_code == 200
    refused = await keyed.client.post("/audits", json=audit_request())
    assert_problem(refused, 401, "unauthorized")


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [("member", 403, "forbidden"), ("aq_unknown", 401, "unauthorized"), ("", 401, "unauthorized")],
)
async def test_only_an_admin_key_signs_in(keyed: Keyed, key: str, status: int, code: str) -> None:
    presented = keyed.member if key == "member" else key
    response = await keyed.client.post("http://test/dashboard/session", data={"key": presented})

    assert_problem(response, status, code)
    assert "set-cookie" not in response.headers


async def test_another_site_cannot_sign_a_visitor_in(keyed: Keyed) -> None:
    response = await keyed.client.post(
        "http://test/dashboard/session",
        data={"key": keyed.admin},
        headers={"Origin": "https://evil.example"},
    )
    same_site = await keyed.client.post(
        "http://test/dashboard/session",
        data={"key": keyed.admin},
        headers={"Origin": "http://test"},
    )

    assert_problem(response, 403, "forbidden")
    assert same_site.status_code == 204


async def test_signing_out_drops_the_cookie(keyed: Keyed) -> None:
    await keyed.client.post("http://test/dashboard/session", data={"key": keyed.admin})
    assert (await keyed.client.get("/status")).status_code == 200

    response = await keyed.client.delete("http://test/dashboard/session")

    assert response.status_code == 204
    assert COOKIE not in keyed.client.cookies
    assert_problem(await keyed.client.get("/status"), 401, "unauthorized")


async def test_the_page_says_keys_are_wanted(keyed: Keyed) -> None:
    page = await keyed.client.get("http://test/dashboard")

    assert page.status_code == 200  # the page holds no data: it asks for a key
    assert '<meta name="auditq-auth" content="keys">' in page.text


async def test_without_keys_signing_in_sets_nothing(client: AsyncClient) -> None:
    response = await client.post("http://test/dashboard/session", data={"key": "anything"})

    assert response.status_code == 204
    assert "set-cookie" not in response.headers
