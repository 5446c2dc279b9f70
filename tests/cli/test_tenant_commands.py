"""`auditq key …` and `auditq tenant …` on the test database, as ops run them."""

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from shared.db import SessionFactory
from shared.spend.budgets import month_resets_at
from shared.tenants.keys import DISPLAY_CHARS, KEY_PREFIX
from shared.webhooks.signing import new_secret, secret_key
from tests.rows import spend_this_month

pytestmark = pytest.mark.usefixtures("settings")  # the test database, cleaned


def auditq(*args: str) -> Result:
    """`auditq ARGS` in a thread of its own: the command's `asyncio.run` sets and clears
    the event loop of the thread it runs in, which must not be the suite's."""
    with ThreadPoolExecutor(max_workers=1) as thread:
        return thread.submit(CliRunner().invoke, app, list(args)).result()


def quotas_of(tenant: str, shown: Result) -> list[str]:
    """The max queued, submit rpm and weight cells of the tenant's row of a table."""
    row = next(line for line in shown.stdout.splitlines() if f" {tenant} " in line)
    return [cell.strip() for cell in row.split("│")[2:5]]


def test_key_create_prints_the_key_alone_on_the_last_line() -> None:
    created = auditq("key", "create", "--tenant", "acme", "--label", "nightly")

    assert created.exit_code == 0, created.output
    key = created.stdout.splitlines()[-1]
    assert key.startswith(KEY_PREFIX)
    assert len(key) >= len(KEY_PREFIX) + 32
    listed = auditq("key", "list")
    assert key not in listed.stdout
    assert key[:DISPLAY_CHARS] in listed.stdout
    assert "nightly" in listed.stdout
    assert "acme" in auditq("tenant", "list").stdout  # its first key made the tenant


def test_keys_are_listed_by_tenant() -> None:
    auditq("key", "create", "--tenant", "acme")
    auditq("key", "create", "--tenant", "globex", "--admin")

    listed = auditq("key", "list", "--tenant", "globex").stdout

    assert "globex" in listed
    assert "admin" in listed
    assert "acme" not in listed


def test_a_key_is_revoked_by_its_prefix() -> None:
    key = auditq("key", "create", "--tenant", "acme").stdout.splitlines()[-1]

    revoked = auditq("key", "revoke", key[:DISPLAY_CHARS])

    assert revoked.exit_code == 0, revoked.output
    assert "revoked" in revoked.output


@pytest.mark.parametrize("wanted", ["aq_nothing", "aq_" + "x" * 43])
def test_revoking_an_unknown_key_says_so(wanted: str) -> None:
    revoked = auditq("key", "revoke", wanted)

    assert revoked.exit_code == 2
    assert "No key is" in revoked.output


def test_tenant_set_changes_only_what_it_names() -> None:
    auditq("tenant", "set", "acme", "--max-queued", "50", "--submit-rpm", "600")

    changed = auditq("tenant", "set", "acme", "--weight", "3")
    cleared = auditq("tenant", "set", "acme", "--submit-rpm", "default")

    assert quotas_of("acme", changed) == ["50", "600", "3"]
    assert quotas_of("acme", cleared) == ["50", "default", "3"]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["tenant", "set", "Acme Corp"], "is not a tenant name"),
        (["tenant", "set", "acme", "--max-queued", "0"], "from 1 to"),
        (["tenant", "set", "acme", "--max-queued", "99999999999"], "from 1 to"),
        (["tenant", "set", "acme", "--max-queued", "²"], "from 1 to"),
        (["tenant", "set", "acme", "--weight", "3000000000"], "less than or equal"),
        (["key", "create", "--tenant", "-acme"], "is not a tenant name"),
    ],
)
def test_bad_names_and_limits_are_refused(args: list[str], says: str) -> None:
    refused = auditq(*args)

    assert refused.exit_code == 2
    assert says in refused.output


def test_a_tenant_s_webhook_secret_is_set_generated_or_reset_and_never_listed() -> None:
    generated = auditq("tenant", "set", "acme", "--webhook-secret", "generate")
    secret = generated.stdout.splitlines()[-1]
    given = new_secret()
    set_ = auditq("tenant", "set", "globex", "--webhook-secret", given)
    listed = auditq("tenant", "list")
    reset = auditq("tenant", "set", "acme", "--webhook-secret", "default")

    assert generated.exit_code == 0, generated.output
    assert secret.startswith("whsec_")
    assert len(secret_key(secret)) == 32
    assert set_.exit_code == 0, set_.output
    assert given not in set_.stdout
    for shown in (listed.stdout, generated.stdout.rsplit(secret, 1)[0]):
        assert secret not in shown
        assert given not in shown
    assert webhook_secret_of("acme", listed) == "own"
    assert webhook_secret_of("globex", listed) == "own"
    assert webhook_secret_of("acme", reset) == "default"


def webhook_secret_of(tenant: str, shown: Result) -> str:
    row = next(line for line in shown.stdout.splitlines() if f" {tenant} " in line)
    return row.split("│")[5].strip()


@pytest.mark.parametrize(
    ("secret", "says"),
    [("abc", "starts with 'whsec_'"), ("whsec_c2hvcnQ=", "24 to 64 bytes")],
)
def test_a_malformed_webhook_secret_is_refused(secret: str, says: str) -> None:
    refused = auditq("tenant", "set", "acme", "--webhook-secret", secret)

    assert refused.exit_code == 2
    assert says in refused.output
    assert secret not in auditq("tenant", "list").stdout


def budget_cells(tenant: str, shown: Result) -> list[str]:
    """The monthly budget, spent and left cells of the tenant's row of the spend table."""
    spend = shown.stdout.split("spend this month")[1]
    row = next(line for line in spend.splitlines() if f" {tenant} " in line)
    return [cell.strip() for cell in row.split("│")[2:5]]


def test_tenant_set_gives_and_takes_a_monthly_budget() -> None:
    given = auditq("tenant", "set", "acme", "--monthly-budget-usd", "250")
    small = auditq("tenant", "set", "acme", "--monthly-budget-usd", "0.0005")
    taken = auditq("tenant", "set", "acme", "--monthly-budget-usd", "none")

    assert given.exit_code == 0, given.output
    assert budget_cells("acme", given) == ["250.00 USD", "0.00 USD", "250.00 USD"]
    assert budget_cells("acme", small) == ["0.0005 USD", "0.00 USD", "0.0005 USD"]
    assert "spend this month" not in taken.stdout  # no budget, nothing spent
    assert quotas_of("acme", taken) == ["default", "default", "1"]  # nothing else changed


@pytest.mark.parametrize("budget", ["-1", "ten", "NaN", "1e12", "0.00000000001", "default"])
def test_a_budget_that_is_no_amount_is_refused(budget: str) -> None:
    refused = auditq("tenant", "set", "acme", "--monthly-budget-usd", budget)

    assert refused.exit_code == 2
    assert "amount of USD" in refused.output


async def test_tenant_list_shows_what_each_tenant_spent_this_month(
    session_factory: SessionFactory,
) -> None:
    auditq("tenant", "set", "acme", "--monthly-budget-usd", "50")
    await spend_this_month(session_factory, "acme", Decimal("12.3456"))

    listed = auditq("tenant", "list")

    assert budget_cells("acme", listed) == ["50.00 USD", "12.35 USD", "37.65 USD"]
    assert f"budgets reset on {month_resets_at(datetime.now(UTC)):%Y-%m-%d}" in listed.stdout
