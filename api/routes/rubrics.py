"""The rubrics API: named, versioned, immutable criteria sets."""

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response

from api.auth import CurrentCaller
from api.deps import (
    CursorKey,
    PageCursor,
    PageLimit,
    SettingsDep,
    TenantFilter,
    Transaction,
    set_location,
    statements,
)
from api.openapi import BODY_PROBLEMS, problems
from shared.audits.schemas import MAX_RUBRIC_VERSION
from shared.pagination import DEFAULT_LIMIT, InvalidCursor
from shared.rubrics import service as rubrics
from shared.rubrics.exceptions import RubricNotFound
from shared.rubrics.repository import RubricRow
from shared.rubrics.schemas import RubricCreate, RubricName, RubricPage, RubricRead

router = APIRouter(prefix="/rubrics", tags=["rubrics"])


def to_read(rubric: RubricRow) -> RubricRead:
    return RubricRead.model_validate(rubric, from_attributes=True)


@router.post("", status_code=201, responses=problems(extra=BODY_PROBLEMS))
async def publish_rubric(
    body: RubricCreate,
    caller: CurrentCaller,
    transaction: Transaction,
    settings: SettingsDep,
    request: Request,
    response: Response,
) -> RubricRead:
    """Publish a rubric; an existing name gets its next version (rubrics never change)."""
    rubric = await rubrics.publish(transaction, data=body, tenant=caller.tenant, settings=settings)
    query = f"version={rubric.version}"
    set_location(request, response, "get_rubric", name=rubric.name, query=query)
    return to_read(rubric)


@router.get("", responses=problems(InvalidCursor))
async def list_rubrics(
    request: Request,
    caller: CurrentCaller,
    cursor_key: CursorKey,
    tenant: TenantFilter = None,
    limit: PageLimit = DEFAULT_LIMIT,
    cursor: PageCursor = None,
) -> RubricPage:
    """The latest version of each of the tenant's rubrics, by name (names are per tenant)."""
    async with statements(request) as conn:
        rows, next_cursor = await rubrics.list_latest(
            conn,
            tenant=caller.rubrics_of(tenant),
            limit=limit,
            cursor=cursor,
            cursor_key=cursor_key,
        )
    return RubricPage(items=[to_read(row) for row in rows], next_cursor=next_cursor)


@router.get("/{name}", responses=problems(RubricNotFound))
async def get_rubric(
    name: RubricName,
    caller: CurrentCaller,
    request: Request,
    tenant: TenantFilter = None,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_RUBRIC_VERSION, description="Default: the latest.")
    ] = None,
) -> RubricRead:
    """A rubric's latest version, or the one asked for."""
    async with statements(request) as conn:
        rubric = await rubrics.get_or_raise(
            conn, tenant=caller.rubrics_of(tenant), name=name, version=version
        )
    return to_read(rubric)
