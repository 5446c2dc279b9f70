"""Every table, imported in one place for Alembic and the tests."""

from shared.audits.models import Audit

__all__ = ["Audit"]
