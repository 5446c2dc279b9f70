"""Every table, imported in one place for Alembic and the tests."""

from shared.audits.models import Audit
from shared.batches.models import Batch
from shared.rubrics.models import Rubric
from shared.spend.models import TenantSpend
from shared.tenants.models import ApiKey, Tenant
from shared.webhooks.models import WebhookAttempt, WebhookEvent

__all__ = [
    "ApiKey",
    "Audit",
    "Batch",
    "Rubric",
    "Tenant",
    "TenantSpend",
    "WebhookAttempt",
    "WebhookEvent",
]
