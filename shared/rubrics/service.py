"""Named, versioned criteria sets. Functions take the session first and never commit."""

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col

from shared.db import StatementConnection
from shared.pagination import decode_name_cursor, encode_name_cursor, split_page
from shared.rubrics.models import Rubric
from shared.rubrics.schemas import RubricCreate


async def publish(session: AsyncSession, *, data: RubricCreate) -> Rubric:
    """Store `data` as the next version of its name (1 for a new name).

    A transaction-scoped advisory lock on the name serialises concurrent
    publishers, so two of them get versions n+1 and n+2, not a key conflict.
    """
    await session.execute(sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(data.name))))
    latest = sa.select(sa.func.coalesce(sa.func.max(col(Rubric.version)), 0)).where(
        col(Rubric.name) == data.name
    )
    stmt = (
        sa.insert(Rubric)
        .values(
            name=data.name,
            version=latest.scalar_subquery() + 1,
            description=data.description,
            criteria=[c.model_dump() for c in data.criteria],
        )
        .returning(Rubric)
    )
    rubric: Rubric = (await session.execute(stmt)).scalar_one()
    return rubric


async def get(session: AsyncSession, *, name: str, version: int | None = None) -> Rubric | None:
    """A given version of a rubric, or its latest when `version` is None."""
    stmt = sa.select(Rubric).where(col(Rubric.name) == name)
    if version is not None:
        stmt = stmt.where(col(Rubric.version) == version)
    rubric: Rubric | None = (
        await session.execute(stmt.order_by(col(Rubric.version).desc()).limit(1))
    ).scalar_one_or_none()
    return rubric


_BY_NAME = "SELECT name, version, description, criteria, created_at FROM rubric WHERE name = $1"
_LATEST_VERSION = f"{_BY_NAME} ORDER BY version DESC LIMIT 1"
_VERSION = f"{_BY_NAME} AND version = $2"


async def find(
    conn: StatementConnection, *, name: str, version: int | None = None
) -> Rubric | None:
    """`get` on a statement connection, for the single-audit submit (shared/audits/records.py)."""
    if version is None:
        record = await conn.fetchrow(_LATEST_VERSION, name)
    else:
        record = await conn.fetchrow(_VERSION, name, version)
    if record is None:
        return None
    return Rubric(**record)


async def list_latest(
    session: AsyncSession, *, limit: int, cursor: str | None
) -> tuple[list[Rubric], str | None]:
    """The latest version of each rubric, by name."""
    latest = (
        sa.select(col(Rubric.name), sa.func.max(col(Rubric.version)))
        .group_by(col(Rubric.name))
        .order_by(col(Rubric.name))
        .limit(limit + 1)
    )
    if cursor is not None:
        latest = latest.where(col(Rubric.name) > decode_name_cursor(cursor))
    stmt = (
        sa.select(Rubric)
        .where(sa.tuple_(col(Rubric.name), col(Rubric.version)).in_(latest))
        .order_by(col(Rubric.name))
    )
    rows = list((await session.execute(stmt)).scalars())
    return split_page(rows, limit=limit, cursor_of=lambda r: encode_name_cursor(r.name))
