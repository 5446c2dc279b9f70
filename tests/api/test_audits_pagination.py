"""Walking `GET /audits` page by page: every row once, newest first, under every filter.

500 audits are written in one multi-row insert, with timestamps that are partly
equal (so the order, and the cursor, rest on the id tie-break) and partly distinct.
"""

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID, uuid4

import pytest
import sqlalchemy as sa
from httpx import AsyncClient

from shared.audits.models import Audit
from shared.audits.schemas import AuditCreate
from shared.audits.service import ResolvedCriteria, new_audit
from shared.config import Settings
from shared.db import SessionFactory, session_scope
from shared.tenants.caller import DEFAULT_TENANT
from tests.factories import audit_request
from tests.rows import ensure_rubrics

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
RUBRICS = ("green_claims", "accessibility", None)
PAGE = 7

Params = list[tuple[str, str]]


@dataclass(frozen=True)
class Seeded:
    id: UUID
    created_at: datetime
    status: str
    batch_id: UUID | None
    rubric_name: str | None


def created_at(index: int) -> datetime:
    """The first 250 rows come in groups of six sharing a timestamp; the rest are distinct."""
    return T0 + timedelta(seconds=index // 6 if index < 250 else index)


def newest_first(rows: Sequence[Seeded]) -> list[UUID]:
    # PostgreSQL orders uuids bytewise, as Python orders UUIDs by their integer.
    return [row.id for row in sorted(rows, key=lambda r: (r.created_at, r.id), reverse=True)]


async def insert(factory: SessionFactory, rows: list[dict[str, Any]]) -> None:
    async with session_scope(factory) as session:
        await ensure_rubrics(session, rows)
        await session.execute(sa.insert(Audit).values(rows))


def audit_rows(count: int, *, batches: Sequence[UUID], start: int = 0) -> list[dict[str, Any]]:
    """Column values of `count` audits as the service writes them, varied for the filters."""
    data = AuditCreate.model_validate(audit_request())
    criteria = ResolvedCriteria(criteria=list(data.criteria or []))
    rows = []
    for index in range(start, start + count):
        new = new_audit(
            data,
            tenant=DEFAULT_TENANT,
            settings=Settings(),
            criteria=criteria,
            batch_id=[*batches, None][index % 4],
        )
        row = asdict(new)
        row.update(
            status=STATUSES[index % 5],
            rubric_name=RUBRICS[index % 3],
            rubric_version=1 if RUBRICS[index % 3] else None,
            created_at=created_at(index),
        )
        rows.append(row)
    return rows


@pytest.fixture
async def batches(session_factory: SessionFactory, clean: None) -> list[UUID]:
    ids = [uuid4() for _ in range(3)]
    async with session_scope(session_factory) as session:
        for batch_id in ids:
            await session.execute(
                sa.text("INSERT INTO batch (id, tenant, metadata) VALUES (:id, 'default', '{}')"),
                {"id": batch_id},
            )
    return ids


@pytest.fixture
async def seeded(session_factory: SessionFactory, batches: list[UUID]) -> list[Seeded]:
    rows = audit_rows(500, batches=batches)
    await insert(session_factory, rows)
    return [
        Seeded(r["id"], r["created_at"], r["status"], r["batch_id"], r["rubric_name"]) for r in rows
    ]


async def walk(
    client: AsyncClient,
    params: Params,
    *,
    between_pages: Callable[[list[dict[str, Any]]], Awaitable[None]] | None = None,
) -> list[UUID]:
    """Every id `GET /audits` returns, following `next_cursor` with pages of `PAGE`."""
    seen: list[UUID] = []
    cursor: str | None = None
    while True:
        page_params = [*params, ("limit", str(PAGE)), *([("cursor", cursor)] if cursor else [])]
        response = await client.get("/audits", params=tuple(page_params))
        assert response.status_code == 200, response.text
        page = response.json()
        seen += [UUID(item["id"]) for item in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
        assert len(page["items"]) == PAGE  # only the last page is short
        if between_pages is not None:
            await between_pages(page["items"])


async def test_walk_sees_every_row_once_newest_first_while_rows_arrive(
    client: AsyncClient,
    session_factory: SessionFactory,
    seeded: list[Seeded],
    batches: list[UUID],
) -> None:
    newer: list[UUID] = []
    older: list[UUID] = []

    async def more_rows(page: list[dict[str, Any]]) -> None:
        """New audits between two fetches: newer than all, tied with the cursor, and older."""
        last = datetime.fromisoformat(page[-1]["created_at"])
        rows = audit_rows(3, batches=batches, start=len(newer))
        rows[0]["created_at"] = sa.func.now()
        rows[1]["created_at"] = last
        rows[2]["created_at"] = T0 - timedelta(days=1, seconds=len(older))  # older than all
        await insert(session_factory, rows)
        newer.append(rows[0]["id"])
        older.append(rows[2]["id"])

    seen = await walk(client, [], between_pages=more_rows)

    pre_existing = {row.id for row in seeded}
    assert len(seen) == len(set(seen)), "a row was returned twice"
    assert [row_id for row_id in seen if row_id in pre_existing] == newest_first(seeded)
    assert len(newer) > 500 // PAGE
    assert not set(newer) & set(seen), "a row ahead of the cursor was returned"
    assert set(older) <= set(seen), "a row behind the cursor was missed"


async def test_every_row_is_seen_with_equal_timestamps_across_page_boundaries(
    client: AsyncClient, session_factory: SessionFactory, batches: list[UUID]
) -> None:
    """20 audits created at the same instant: only the id orders them."""
    rows = audit_rows(20, batches=batches)
    for row in rows:
        row["created_at"] = T0
    await insert(session_factory, rows)

    seen = await walk(client, [])

    assert seen == sorted((row["id"] for row in rows), reverse=True)


async def test_a_walk_that_ends_on_a_full_page_has_no_empty_page(
    client: AsyncClient, session_factory: SessionFactory, batches: list[UUID]
) -> None:
    await insert(session_factory, audit_rows(2 * PAGE, batches=batches))

    first = (await client.get("/audits", params={"limit": PAGE})).json()
    cursor = first["next_cursor"]
    second = (await client.get("/audits", params={"limit": PAGE, "cursor": cursor})).json()

    assert len(first["items"]) == len(second["items"]) == PAGE
    assert second["next_cursor"] is None


def iso(moment: datetime) -> str:
    return moment.isoformat()


FILTERS: list[tuple[str, Callable[[list[UUID]], Params], Callable[[Seeded, list[UUID]], bool]]] = [
    ("one status", lambda b: [("status", "failed")], lambda r, b: r.status == "failed"),
    (
        "two statuses",
        lambda b: [("status", "failed"), ("status", "cancelled")],
        lambda r, b: r.status in ("failed", "cancelled"),
    ),
    ("batch", lambda b: [("batch_id", str(b[0]))], lambda r, b: r.batch_id == b[0]),
    (
        "rubric",
        lambda b: [("rubric", "green_claims")],
        lambda r, b: r.rubric_name == "green_claims",
    ),
    (
        # T0 + 20 s is the timestamp of a group of six: "after" excludes it.
        "created_after",
        lambda b: [("created_after", iso(T0 + timedelta(seconds=20)))],
        lambda r, b: r.created_at > T0 + timedelta(seconds=20),
    ),
    (
        "created_before",
        lambda b: [("created_before", iso(T0 + timedelta(seconds=300)))],
        lambda r, b: r.created_at < T0 + timedelta(seconds=300),
    ),
    (
        "created_after without a time zone is UTC",
        lambda b: [("created_after", "2026-01-01T00:00:30")],
        lambda r, b: r.created_at > T0 + timedelta(seconds=30),
    ),
    (
        "created_before in another time zone",
        lambda b: [("created_before", "2026-01-01T01:05:00+01:00")],
        lambda r, b: r.created_at < T0 + timedelta(seconds=300),
    ),
    (
        "everything at once",
        lambda b: [
            ("status", "queued"),
            ("status", "running"),
            ("status", "failed"),
            ("batch_id", str(b[1])),
            ("rubric", "accessibility"),
            ("created_after", iso(T0 + timedelta(seconds=10))),
            ("created_before", iso(T0 + timedelta(seconds=400))),
        ],
        lambda r, b: (
            r.status in ("queued", "running", "failed")
            and r.batch_id == b[1]
            and r.rubric_name == "accessibility"
            and T0 + timedelta(seconds=10) < r.created_at < T0 + timedelta(seconds=400)
        ),
    ),
]


@pytest.mark.parametrize(
    ("params", "matches"), [f[1:] for f in FILTERS], ids=[f[0] for f in FILTERS]
)
async def test_every_filter_walks_with_the_cursor(
    client: AsyncClient,
    seeded: list[Seeded],
    batches: list[UUID],
    params: Callable[[list[UUID]], Params],
    matches: Callable[[Seeded, list[UUID]], bool],
) -> None:
    expected = newest_first([row for row in seeded if matches(row, batches)])
    assert PAGE < len(expected) < len(seeded)  # several pages, and the filter filters

    assert await walk(client, params(batches)) == expected


async def test_a_filter_that_matches_nothing_is_an_empty_page(
    client: AsyncClient, seeded: list[Seeded]
) -> None:
    response = await client.get("/audits", params={"batch_id": str(uuid4())})

    assert response.json() == {"items": [], "next_cursor": None}
