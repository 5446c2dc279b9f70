"""The limits of a submission that a deployment sets.

`MAX_CONTENT_CHARS`, `ALLOWED_MODELS`, `MAX_SAMPLES` and `MAX_CRITERIA_CHARS` (the
criteria's descriptions together, inline or a rubric's) are checked as request validation
checks: 422 `validation_error`, every problem in `errors` at its `loc`. The
request schemas check what never changes; these take the process's `Settings`.

Once the criteria are known (a rubric's are read first), the prompt and its reply
are estimated as the rate limiter estimates a call (shared/llm/ratelimit.py): an
audit that would not fit the model's context (`MODEL_CONTEXT_TOKENS`) is refused
with 422 `prompt_too_large` before anything is written, rather than failing at the
model after a queue wait.
"""

from collections.abc import Sequence
from typing import Any

from shared.audits.repository import RerunItem
from shared.audits.schemas import AuditFields, Criterion
from shared.config import Settings
from shared.errors import InvalidRequest, summarize_issues
from shared.llm.ratelimit import estimate_tokens

Loc = tuple[str | int, ...]


class SubmissionInvalid(InvalidRequest):
    code = "validation_error"
    title = "Invalid request"

    def __init__(self, issues: Sequence[dict[str, Any]]) -> None:
        super().__init__(summarize_issues(issues), errors=list(issues))


class PromptTooLarge(SubmissionInvalid):
    code = "prompt_too_large"
    title = "Prompt larger than the model's context"


def _issue(loc: Loc, msg: str, kind: str = "value_error") -> dict[str, Any]:
    prefix = "Value error, " if kind == "value_error" else ""
    return {"loc": list(loc), "msg": prefix + msg, "type": kind}


def criteria_problems(
    criteria: Sequence[Criterion], settings: Settings, *, loc: Loc
) -> list[dict[str, Any]]:
    """Criteria whose descriptions together exceed `MAX_CRITERIA_CHARS`."""
    chars = sum(len(c.description) for c in criteria)
    if chars <= settings.max_criteria_chars:
        return []
    msg = (
        f"descriptions must be at most {settings.max_criteria_chars} characters together "
        f"(MAX_CRITERIA_CHARS), got {chars}"
    )
    return [_issue(loc, msg)]


def problems_of(
    data: AuditFields, settings: Settings, *, loc: Loc = ("body",)
) -> list[dict[str, Any]]:
    """What this audit asks beyond the deployment's limits; empty when nothing."""
    issues = run_problems(
        content_chars=len(data.content),
        model=data.model,
        samples=data.samples,
        settings=settings,
        loc=loc,
    )
    if data.criteria is not None:
        issues += criteria_problems(data.criteria, settings, loc=(*loc, "criteria"))
    return issues


def run_problems(
    *, content_chars: int, model: str | None, samples: int, settings: Settings, loc: Loc
) -> list[dict[str, Any]]:
    """An audit's content, model and samples beyond the deployment's limits (a batch's
    rerun checks these of the audits it copies without reading their content out)."""
    issues = []
    limit = settings.max_content_chars
    if content_chars > limit:
        msg = f"must be at most {limit} characters (MAX_CONTENT_CHARS), got {content_chars}"
        issues.append(_issue((*loc, "content"), msg))
    if model is not None and model not in settings.models:
        msg = f"must be one of ALLOWED_MODELS: {', '.join(settings.models)}"
        issues.append(_issue((*loc, "model"), msg))
    if samples > settings.max_samples:
        msg = f"must be at most {settings.max_samples} (MAX_SAMPLES), got {samples}"
        issues.append(_issue((*loc, "samples"), msg))
    return issues


def check(data: AuditFields, settings: Settings) -> None:
    """Refuse an audit beyond the deployment's limits, as request validation would."""
    if issues := problems_of(data, settings):
        raise SubmissionInvalid(issues)


def check_all(items: Sequence[AuditFields], settings: Settings) -> None:
    """`check` for a batch's items, every problem named at its item's index."""
    issues = [
        issue
        for index, item in enumerate(items)
        for issue in problems_of(item, settings, loc=("body", "audits", index))
    ]
    if issues:
        raise SubmissionInvalid(issues)


def check_rerun(items: Sequence[RerunItem], settings: Settings) -> None:
    """Refuse a batch's rerun if any audit it copies is beyond the deployment's limits now."""
    issues = [
        issue
        for item in items
        for issue in run_problems(
            content_chars=item.content_chars,
            model=item.model,
            samples=item.samples,
            settings=settings,
            loc=("audits", item.batch_index),
        )
    ]
    if issues:
        raise SubmissionInvalid(issues)


def prompt_problems(
    data: AuditFields, criteria: Sequence[Criterion], model: str, settings: Settings, *, loc: Loc
) -> list[dict[str, Any]]:
    """The audit's estimated prompt and reply, if they exceed the model's context."""
    text = len(data.subject) + len(data.content)
    text += sum(len(c.id) + len(c.description) for c in criteria)
    # The reply shares the context: its estimate grows with the criteria.
    tokens = estimate_tokens(prompt_chars=text, criteria=len(criteria))
    context = settings.context_tokens(model)
    if tokens <= context:
        return []
    msg = (
        f"the prompt and its reply would be about {tokens} tokens, more than the {context} "
        f"of {model} (MODEL_CONTEXT_TOKENS); send less content or fewer criteria"
    )
    return [_issue((*loc, "content"), msg, kind="prompt_too_large")]


def check_prompts(problems: list[dict[str, Any]]) -> None:
    """Refuse the submission if any of its audits' prompts is too large."""
    if problems:
        raise PromptTooLarge(problems)
