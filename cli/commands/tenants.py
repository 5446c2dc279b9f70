"""`auditq key …` and `auditq tenant …`: keys and quotas, for ops.

These talk to PostgreSQL through `DATABASE_URL`, as `auditq migrate` does (the
embedded server where it is unset), not to the API: they are how the first key is
made. Every change reaches the running API processes as it commits.
"""

import asyncio
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, TypeVar

import typer

from cli import output
from cli.errors import CliError, reports_errors

T = TypeVar("T")

keys_app = typer.Typer(
    help="API keys: each acts for one tenant (AUTH=keys).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
tenants_app = typer.Typer(
    help="Tenants: their quotas, scheduling weight, webhook secret and monthly budget.",
    no_args_is_help=True,
    rich_markup_mode=None,
)

Tenant = Annotated[str, typer.Option("--tenant", help="The tenant's name, e.g. acme.")]


# The columns are PostgreSQL integers.
MAX_INT = 2_147_483_647
UNDEFINED_TABLE = "42P01"  # PostgreSQL's SQLSTATE: the migrations have not run


def _limit(value: str | None) -> int | None:
    """`N` or `default` (the setting's value): a quota option's text."""
    if value is None or value == "default":
        return None
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_INT:
        raise typer.BadParameter(f"a whole number from 1 to {MAX_INT:,}, or `default`")
    return int(value)


GENERATE = "generate"


def _webhook_secret(value: str) -> str | None:
    """`whsec_…`, `generate` (a new one) or `default` (WEBHOOK_SECRET): the option's text."""
    from shared.webhooks.signing import InvalidSecret, new_secret, secret_key

    if value == "default":
        return None
    if value == GENERATE:
        return new_secret()
    try:
        secret_key(value)
    except InvalidSecret as problem:
        raise typer.BadParameter(f"{problem} (or `generate`, or `default`)") from None
    return value


# The column keeps ten digits before the point.
MAX_BUDGET_USD = Decimal(1_000_000_000)


def _budget(value: str) -> Decimal | None:
    """`X` (USD, 0 or more) or `none`: a budget option's text."""
    if value == "none":
        return None
    try:
        budget = Decimal(value)
    except InvalidOperation:
        budget = Decimal("NaN")
    if not budget.is_finite() or not 0 <= budget <= MAX_BUDGET_USD or _places(budget) > 10:
        raise typer.BadParameter(
            f"an amount of USD from 0 to {MAX_BUDGET_USD:,}, to 10 decimal places, or `none`"
        )
    return budget


def _places(amount: Decimal) -> int:
    exponent = amount.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _in_database(work: Callable[[Any], Awaitable[T]]) -> T:
    """Run `work` in one transaction on the ops database; problems become CLI errors."""
    from cli.dev import ops_database

    with ops_database() as database_url:
        return asyncio.run(_transaction(database_url, work))


async def _transaction(database_url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    from shared.db import in_transaction
    from shared.errors import AppError

    try:
        return await in_transaction(database_url, work)
    except AppError as error:
        raise CliError(error.detail) from None
    except Exception as error:
        if getattr(getattr(error, "orig", None), "sqlstate", None) == UNDEFINED_TABLE:
            raise CliError(
                "the database has no auditq tables: run `auditq migrate` first"
            ) from None
        raise


@keys_app.command("create")
@reports_errors
def create_key(
    tenant: Tenant,
    label: Annotated[str | None, typer.Option(help="What the key is for, shown by `list`.")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="See and manage every tenant.")] = False,
) -> None:
    """Create a key of TENANT (and the tenant, on its first key); the key is printed once,
    alone on the last line."""
    from shared.tenants import service
    from shared.tenants.caller import Role

    role = Role.ADMIN if admin else Role.MEMBER
    created = _in_database(
        lambda conn: service.create_key(conn, tenant=tenant, label=label, role=role)
    )
    output.say(
        f"{role} key {created.row.prefix}… of tenant {created.row.tenant} created; "
        "it is shown this once:"
    )
    print(created.secret, flush=True)


@keys_app.command("list")
@reports_errors
def list_keys(
    tenant: Annotated[str | None, typer.Option("--tenant", help="Only this tenant's.")] = None,
) -> None:
    """List keys by prefix (never the keys themselves), revoked ones too."""
    from shared.tenants import repository

    rows = _in_database(lambda conn: repository.keys(conn, tenant=tenant))
    output.show(output.keys_table(rows))


@keys_app.command("revoke")
@reports_errors
def revoke_key(
    key_or_prefix: Annotated[str, typer.Argument(help="The whole key, or its prefix.")],
) -> None:
    """Revoke a key: every API process refuses it from its next request on."""
    from shared.tenants import service

    row = _in_database(lambda conn: service.revoke_key(conn, key_or_prefix))
    output.say(f"key {row.prefix}… of tenant {row.tenant} revoked")


Quota = Annotated[
    str | None,
    typer.Option(metavar="N|default", help="N, or `default` for the setting's value."),
]


@tenants_app.command("set")
@reports_errors
def set_tenant(
    name: Annotated[str, typer.Argument(help="The tenant (created if new).")],
    max_queued: Annotated[
        str | None,
        typer.Option(
            "--max-queued",
            metavar="N|default",
            help="Audits queued or running at most; `default`: TENANT_MAX_QUEUED.",
        ),
    ] = None,
    submit_rpm: Annotated[
        str | None,
        typer.Option(
            "--submit-rpm",
            metavar="N|default",
            help="Submissions a minute at most; `default`: TENANT_SUBMIT_RPM.",
        ),
    ] = None,
    weight: Annotated[
        int | None,
        typer.Option("--weight", min=1, max=MAX_INT, help="Share of the workers (default 1)."),
    ] = None,
    webhook_secret: Annotated[
        str | None,
        typer.Option(
            "--webhook-secret",
            metavar="whsec_…|generate|default",
            help="Signs the tenant's webhooks; `generate`: a new one, printed once on the "
            "last line; `default`: WEBHOOK_SECRET.",
        ),
    ] = None,
    monthly_budget_usd: Annotated[
        str | None,
        typer.Option(
            "--monthly-budget-usd",
            metavar="USD|none",
            help="USD its audits may spend per calendar month (UTC); beyond it, submissions "
            "get 429 and queued audits wait until the first of next month. `none`: no budget.",
        ),
    ] = None,
) -> None:
    """Create a tenant, or change its quotas, weight, webhook secret and monthly budget;
    options left out stay as they are."""
    changes: dict[str, int | str | Decimal | None] = {}
    if max_queued is not None:
        changes["max_queued"] = _limit(max_queued)
    if submit_rpm is not None:
        changes["submit_rpm"] = _limit(submit_rpm)
    if weight is not None:
        changes["weight"] = weight
    if webhook_secret is not None:
        changes["webhook_secret"] = _webhook_secret(webhook_secret)
    if monthly_budget_usd is not None:
        changes["monthly_budget_usd"] = _budget(monthly_budget_usd)
    rows, spent = _in_database(lambda conn: _set_and_show(conn, name, changes))
    _show(rows, spent)
    if webhook_secret == GENERATE:
        output.say(f"the webhook secret of tenant {rows[0].name}; it is shown this once:")
        print(rows[0].webhook_secret, flush=True)


async def _set_and_show(
    conn: Any, name: str, changes: dict[str, int | str | Decimal | None]
) -> tuple[list[Any], dict[str, Decimal]]:
    from shared.spend import repository as spend
    from shared.tenants import service

    row = await service.set_tenant(conn, name, changes)
    return [row], await spend.spent_this_month_by_tenant(conn)


async def _all_and_spend(conn: Any) -> tuple[list[Any], dict[str, Decimal]]:
    from shared.spend import repository as spend
    from shared.tenants import repository

    return await repository.all_tenants(conn), await spend.spent_this_month_by_tenant(conn)


@tenants_app.command("list")
@reports_errors
def list_tenants() -> None:
    """List tenants, their quotas (`default`: the setting's), weights, whether they sign
    webhooks with a secret of their own (never the secret), budgets and what they spent
    this month."""
    _show(*_in_database(_all_and_spend))


def _show(rows: list[Any], spent: dict[str, Decimal]) -> None:
    """The tenants, then the spend of those with a budget or a spend this month."""
    from datetime import UTC, datetime

    from shared.spend.budgets import month_resets_at

    output.show(output.tenants_table(rows))
    if any(row.monthly_budget_usd is not None or row.name in spent for row in rows):
        resets_on = f"{month_resets_at(datetime.now(UTC)):%Y-%m-%d}"
        output.show(output.budgets_table(rows, spent, resets_on=resets_on))
