from shared.errors import Conflict, InvalidRequest, NotFound


class BatchNotFound(NotFound):
    code = "batch_not_found"
    title = "Batch not found"


class AuditNotInBatch(InvalidRequest):
    """`after` names no audit of this batch: pass the `after` of the stream's last line."""

    code = "audit_not_in_batch"
    title = "Audit not in batch"


class BatchBudgetSpent(Conflict):
    """The batch spent its `max_cost_usd`: an audit queued again would be cancelled before
    calling the model. `POST /batches/{id}/rerun` runs them as a new batch, whose budget
    is the same with nothing spent."""

    code = "batch_budget_spent"
    title = "Batch budget spent"


class BatchHasNoAudits(Conflict):
    """The batch's audits are all gone (`RETENTION_DAYS` deleted them): nothing to re-run."""

    code = "batch_has_no_audits"
    title = "Batch has no audits"
