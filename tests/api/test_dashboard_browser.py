"""The dashboard and the docs pages in a real headless browser: Debian's Chromium,
driven by Playwright through `executable_path` (no browser download).

The API runs under uvicorn on a loopback port, on the test's PostgreSQL and Redis,
with `ALLOWED_HOSTS` and `CORS_ORIGINS` narrowed as a deployment would. Every request
the browser makes is recorded: none may leave 127.0.0.1. Skipped, with the reason, only
where /usr/bin/chromium is absent (`.ci/run` installs it).

`DASHBOARD_SCREENSHOT=docs/dashboard.png` saves the seeded dashboard as an image.
"""

import os
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from arq.connections import ArqRedis
from playwright.async_api import Browser, BrowserContext, Page, async_playwright, expect
from sqlalchemy.ext.asyncio import AsyncEngine

from shared.config import Settings
from shared.db import SessionFactory
from shared.tenants.caller import Role
from tests.api.test_tenants import new_key
from tests.fixtures.fleet import EVIDENCE, SeededFleet, seed_fleet, truth
from tests.fixtures.serving import serving
from tests.rows import insert_audit

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOT = os.environ.get("DASHBOARD_SCREENSHOT")

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="Debian's chromium is not installed (apt-get install chromium): "
        "the browser tests drive /usr/bin/chromium",
    ),
]


@pytest.fixture(scope="module")
async def browser(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield browser
        await browser.close()


@dataclass
class Tab:
    """A page in a fresh browser profile, with every request and console error it made."""

    page: Page
    context: BrowserContext
    requests: list[str] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)  # refused by the page's policy, unsent
    errors: list[str] = field(default_factory=list)

    def assert_stayed_on(
        self, root_url: str, *, refused: tuple[int, ...] = (), blocked: bool = False
    ) -> None:
        """No request went anywhere but the API, and nothing went wrong in the page but
        the `refused` statuses the test asked for, and with `blocked`, requests for other
        hosts that the page's Content-Security-Policy stopped in the browser."""
        here = urlsplit(root_url).netloc
        away = [
            url
            for url in self.requests
            if urlsplit(url).netloc not in ("", here) and url not in self.blocked
        ]
        assert self.requests
        assert not away, away
        assert blocked or not self.blocked, self.blocked
        expected = [f"the server responded with a status of {status}" for status in refused]
        if blocked:
            expected.append("violates the following Content Security Policy directive")
        errors = [error for error in self.errors if not any(e in error for e in expected)]
        assert not errors, errors


@pytest.fixture
async def tab(browser: Browser) -> AsyncIterator[Tab]:
    # A context of its own: an empty profile, no cookie of another test.
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    opened = Tab(page, context)
    context.on("request", lambda request: opened.requests.append(request.url))
    context.on(
        "requestfailed",
        lambda request: opened.blocked.append(request.url) if request.failure == "csp" else None,
    )
    page.on("pageerror", lambda error: opened.errors.append(str(error)))
    page.on(
        "console",
        lambda message: opened.errors.append(message.text) if message.type == "error" else None,
    )
    yield opened
    await context.close()


def deployed(settings: Settings, **overrides: Any) -> Settings:
    """Hosts and origins narrowed as in production: the dashboard must work within them."""
    narrowed = {"allowed_hosts": ["127.0.0.1"], "cors_origins": ["https://ops.example.com"]}
    return settings.model_copy(update={**narrowed, **overrides})


@pytest.fixture
async def fleet(
    session_factory: SessionFactory, redis: ArqRedis, settings: Settings
) -> SeededFleet:
    return await seed_fleet(session_factory, redis, settings.queue_name)


def _seconds(text: str) -> float:
    """`oldest 6 min 40 s` -> 400."""
    units = {"h": 3600, "min": 60, "s": 1}
    return sum(int(n) * units[unit] for n, unit in re.findall(r"(\d+) (h|min|s)\b", text))


async def test_the_dashboard_shows_what_the_database_holds(
    tab: Tab,
    fleet: SeededFleet,
    settings: Settings,
    engine: AsyncEngine,
    session_factory: SessionFactory,
) -> None:
    expected = await truth(engine)
    page = tab.page
    with serving(deployed(settings)) as url:
        await page.goto(f"{url}/dashboard?every=1")

        await expect(page.locator("#overview")).to_be_visible()
        queued = sum(expected.queued.values())
        await expect(page.locator("#queued")).to_have_text(str(queued))
        for (tenant, priority), count in expected.queued.items():
            cell = page.locator(f'td[data-tenant="{tenant}"][data-priority="{priority}"]')
            await expect(cell).to_have_text(str(count))
        oldest = _seconds(await page.locator("#oldest").inner_text())
        assert abs(oldest - max(expected.oldest_age_s.values())) < 15
        await expect(page.locator("#running")).to_have_text(str(expected.running))
        await expect(page.locator("#workers")).to_have_text(str(fleet.workers))
        recent = sum(expected.finished_5_minutes.values())
        await expect(page.locator("#finished-5m")).to_have_text(str(recent))
        await expect(page.locator("#failed-hour")).to_have_text(
            str(expected.finished_hour["failed"])
        )
        for code, count in expected.failed_hour_by_code.items():
            await expect(page.locator(f'li[data-code="{code}"] .count')).to_have_text(str(count))
        links = await page.locator('li[data-code="rate_limited"] a').all()
        assert [await link.get_attribute("href") for link in links] == [
            f"/dashboard/audits/{audit_id}" for audit_id in fleet.failed["rate_limited"]
        ]
        batch = page.locator(f'li[data-batch="{fleet.batch_id}"]')
        await expect(batch.locator(".done")).to_have_text("2 / 5")
        await expect(batch.locator('[role="progressbar"]')).to_have_attribute("aria-valuenow", "2")
        bars = await page.locator("#chart g.minute title").all_text_contents()
        assert len(bars) == 60
        counted = [int(n) for bar in bars for n in re.findall(r"(\d+) [a-z]+(?:,|$)", bar)]
        assert sum(counted) == sum(expected.finished_hour.values())
        if SCREENSHOT:
            await page.screenshot(path=SCREENSHOT, full_page=True)

        # It refreshes itself.
        await insert_audit(session_factory, tenant="umbrella")
        cell = page.locator('td[data-tenant="umbrella"][data-priority="interactive"]')
        await expect(cell).to_have_text("1", timeout=10_000)
        await expect(page.locator("#queued")).to_have_text(str(queued + 1))
        tab.assert_stayed_on(url)


async def test_an_audits_page_shows_its_findings_and_quoted_evidence(
    tab: Tab, fleet: SeededFleet, settings: Settings
) -> None:
    page = tab.page
    with serving(deployed(settings)) as url:
        await page.goto(f"{url}/dashboard")
        await page.locator('li[data-code="invalid_model_output"] a').first.click()
        await expect(page.locator("#audit-error")).to_contain_text("invalid_model_output: ")
        assert "/dashboard/audits/" in page.url

        await page.goto(f"{url}/dashboard/audits/{fleet.audit_with_evidence}")

        await expect(page.locator("#audit-subject")).to_have_text("Bamboo toothbrush product page")
        await expect(page.locator("#audit-verdict")).to_have_text("fail")
        await expect(page.locator("#findings > li")).to_have_count(2)
        quotes = page.locator('li[data-criterion="claims_substantiated"] blockquote.evidence')
        await expect(quotes).to_have_text(EVIDENCE)
        await expect(page.locator("#audit-content mark")).to_have_text(EVIDENCE)
        await page.goto(f"{url}/dashboard/audits/00000000-0000-4000-8000-000000000000")
        await expect(page.locator("#audit-subject")).to_contain_text("No audit has id")
        tab.assert_stayed_on(url, refused=(404,))


async def test_with_keys_it_asks_for_an_admin_key_and_keeps_it_in_a_cookie(
    tab: Tab, settings: Settings, session_factory: SessionFactory
) -> None:
    admin = await new_key(session_factory, "ops", Role.ADMIN)
    member = await new_key(session_factory, "acme")
    await insert_audit(session_factory, tenant="acme")
    page = tab.page
    with serving(deployed(settings, auth="keys")) as url:
        await page.goto(f"{url}/dashboard")
        await expect(page.locator("#sign-in")).to_be_visible()

        await page.fill("#key", member)
        await page.click("#sign-in-form button")
        await expect(page.locator("#sign-in-error")).to_contain_text("admin key")
        await page.fill("#key", admin)
        await page.click("#sign-in-form button")

        await expect(page.locator("#overview")).to_be_visible()
        await expect(page.locator("#queued")).to_have_text("1")
        [cookie] = await tab.context.cookies()
        assert (cookie["name"], cookie["value"]) == ("auditq_key", admin)
        assert cookie["httpOnly"]
        assert cookie["sameSite"] == "Strict"
        assert await page.evaluate("document.cookie") == ""  # out of the script's reach
        await page.reload()
        await expect(page.locator("#queued")).to_have_text("1")

        await page.click("#sign-out")
        await expect(page.locator("#sign-in")).to_be_visible()
        assert await tab.context.cookies() == []
        assert not [u for u in tab.requests if admin in u or member in u], "a key in a URL"
        tab.assert_stayed_on(url, refused=(401, 403))


@pytest.mark.parametrize(
    ("path", "title"), [("/docs", ".swagger-ui .info .title"), ("/redoc", "h1")]
)
async def test_the_docs_pages_use_no_outside_host(
    tab: Tab, settings: Settings, path: str, title: str
) -> None:
    with serving(deployed(settings)) as url:
        await tab.page.goto(url + path, wait_until="networkidle")

        await expect(tab.page.locator(title).first).to_contain_text("auditq")
        # ReDoc's bundle asks a CDN for a logo: the pages' policy stops it (api/docs_policy.py).
        tab.assert_stayed_on(url, blocked=True)
