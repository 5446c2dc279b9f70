"""Every model call of auditq: the client, the prompt, reply validation and error routing."""

from shared.llm.client import audit_content, create_client
from shared.llm.errors import InvalidModelOutput, ModelError, classify
from shared.llm.prompt import PROMPT_VERSION
from shared.llm.schemas import CriterionText, ModelOutcome, ReplyFinding

__all__ = [
    "PROMPT_VERSION",
    "CriterionText",
    "InvalidModelOutput",
    "ModelError",
    "ModelOutcome",
    "ReplyFinding",
    "audit_content",
    "classify",
    "create_client",
]
