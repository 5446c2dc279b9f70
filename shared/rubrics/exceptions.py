from shared.errors import AppError, NotFound


class RubricNotFound(NotFound):
    """An unknown rubric asked for by name (GET /rubrics/{name})."""

    code = "rubric_not_found"
    title = "Rubric not found"


class UnknownRubric(AppError):
    """An audit names a rubric or version that does not exist: the request is invalid."""

    status = 422
    code = "rubric_not_found"
    title = "Rubric not found"
