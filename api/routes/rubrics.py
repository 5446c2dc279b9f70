"""The rubrics API: named, versioned, immutable criteria sets."""

from typing import Annotated

from fastapi import APIRouter, Query, Response

from api.deps import SessionDep
from api.openapi import BODY_PROBLEMS, problems
from shared.audits.schemas import MAX_RUBRIC_VERSION
from shared.pagination import DEFAULT_LIMIT, MAX_LIMIT, InvalidCursor
from shared.rubrics import service as rubrics
from shared.rubrics.exceptions import RubricNotFound
from shared.rubrics.models import Rubric
from shared.rubrics.schemas import RubricCreate, RubricName, RubricPage, RubricRead

router = APIRouter(prefix="/rubrics", tags=["rubrics"])


def to_read(rubric: Rubric) -> RubricRead:
    return RubricRead.model_validate(rubric, from_attributes=True)


@router.post("", status_code=201, responses=problems(extra=BODY_PROBLEMS))
async def publish_rubric(body: RubricCreate, session: SessionDep, response: Response) -> RubricRead:
    """Publish a rubric; an existing name gets its next version (rubrics never change)."""
    rubric = await rubrics.publish(session, data=body)
    response.headers["Location"] = f"/api/v1/rubrics/{rubric.name}?version={rubric.version}"
    return to_read(rubric)


@router.get("", responses=problems(InvalidCursor))
async def list_rubrics(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = DEFAULT_LIMIT,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> RubricPage:
    """The latest version of every rubric, by name."""
    rows, next_cursor = await rubrics.list_latest(session, limit=limit, cursor=cursor)
    return RubricPage(items=[to_read(row) for row in rows], next_cursor=next_cursor)


@router.get("/{name}", responses=problems(RubricNotFound))
async def get_rubric(
    name: RubricName,
    session: SessionDep,
    version: Annotated[
        int | None, Query(ge=1, le=MAX_RUBRIC_VERSION, description="Default: the latest.")
    ] = None,
) -> RubricRead:
    """A rubric's latest version, or the one asked for."""
    rubric = await rubrics.get(session, name=name, version=version)
    if rubric is None:
        suffix = "" if version is None else f" at version {version}"
        raise RubricNotFound(f"No rubric {name!r}{suffix}.")
    return to_read(rubric)
