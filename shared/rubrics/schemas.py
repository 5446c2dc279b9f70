"""Request and response bodies of the rubrics API."""

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from shared.audits.schemas import CRITERION_ID_PATTERN, CriteriaList, Criterion, NoNul

RubricName = Annotated[
    str, Field(pattern=CRITERION_ID_PATTERN, examples=["green_claims"], description="A slug.")
]


class RubricCreate(BaseModel):
    """Publish a rubric; publishing an existing name creates its next version."""

    model_config = ConfigDict(extra="forbid")

    name: RubricName
    description: Annotated[str, Field(max_length=2000), NoNul] = ""
    criteria: CriteriaList


class RubricRead(BaseModel):
    tenant: str = Field(description="The tenant that owns it (`default` without keys).")
    name: str
    version: int
    description: str
    criteria: list[Criterion]
    created_at: datetime


class RubricPage(BaseModel):
    items: list[RubricRead]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null at the end."
    )
