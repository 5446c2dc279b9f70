from shared.errors import Conflict, InvalidRequest, NotFound


class BatchNotFound(NotFound):
    code = "batch_not_found"
    title = "Batch not found"


class AuditNotInBatch(InvalidRequest):
    """`after` names no audit of this batch: pass the `after` of the stream's last line."""

    code = "audit_not_in_batch"
    title = "Audit not in batch"


class BatchHasNoAudits(Conflict):
    """The batch's audits are all gone (`RETENTION_DAYS` deleted them): nothing to re-run."""

    code = "batch_has_no_audits"
    title = "Batch has no audits"
