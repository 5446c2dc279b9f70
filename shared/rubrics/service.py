"""Named, versioned criteria sets. Functions take a `Statements` first and never commit."""

from shared.audits import limits
from shared.config import Settings
from shared.db import Statements
from shared.pagination import Cursors, listing, split_page
from shared.rubrics import repository as rubrics
from shared.rubrics.exceptions import RubricNotFound
from shared.rubrics.repository import RubricRow
from shared.rubrics.schemas import RubricCreate


async def publish(
    conn: Statements, *, data: RubricCreate, tenant: str, settings: Settings
) -> RubricRow:
    """Store `data` as the next version of the tenant's name (1 for a new name); in a
    transaction."""
    if issues := limits.criteria_problems(data.criteria, settings, loc=("body", "criteria")):
        raise limits.SubmissionInvalid(issues)
    return await rubrics.insert_next_version(
        conn,
        tenant=tenant,
        name=data.name,
        description=data.description,
        criteria=[c.model_dump() for c in data.criteria],
    )


async def get_or_raise(
    conn: Statements, *, tenant: str, name: str, version: int | None = None
) -> RubricRow:
    """A given version of the tenant's rubric, or its latest when `version` is None."""
    rubric = await rubrics.find(conn, tenant=tenant, name=name, version=version)
    if rubric is None:
        suffix = "" if version is None else f" at version {version}"
        raise RubricNotFound(f"No rubric {name!r}{suffix}.")
    return rubric


async def list_latest(
    conn: Statements, *, tenant: str, limit: int, cursor: str | None, cursor_key: bytes
) -> tuple[list[RubricRow], str | None]:
    """The latest version of each of the tenant's rubrics, by name."""
    cursors = Cursors(cursor_key, listing("rubrics", {"tenant": tenant}))
    after = "" if cursor is None else cursors.read_name(cursor)
    rows = await rubrics.latest_versions(conn, tenant=tenant, after_name=after, limit=limit + 1)
    return split_page(rows, limit=limit, cursor_of=lambda r: cursors.name(r.name))
