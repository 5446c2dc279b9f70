from shared.errors import InvalidRequest, NotFound


class BatchNotFound(NotFound):
    code = "batch_not_found"
    title = "Batch not found"


class AuditNotInBatch(InvalidRequest):
    """`after` names no audit of this batch: pass the `after` of the stream's last line."""

    code = "audit_not_in_batch"
    title = "Audit not in batch"
