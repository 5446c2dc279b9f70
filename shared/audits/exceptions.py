from shared.errors import Conflict, NotFound


class AuditNotFound(NotFound):
    code = "audit_not_found"
    title = "Audit not found"


class AuditNotCancellable(Conflict):
    code = "audit_not_cancellable"
    title = "Audit cannot be cancelled"


class AuditNotRetryable(Conflict):
    code = "audit_not_retryable"
    title = "Audit cannot be retried"
