"""Request bodies a well-behaved client would send, to be varied one field at a time."""

from typing import Any


def criterion(id_: str = "claims_substantiated", **overrides: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "description": "Every environmental claim is backed by a verifiable source.",
        **overrides,
    }


def audit_request(**overrides: Any) -> dict[str, Any]:
    """A valid `POST /audits` body; `overrides` replace (or, with None, drop) fields."""
    body: dict[str, Any] = {
        "subject": "Product page: bamboo toothbrush",
        "content": "Our toothbrush is 100% biodegradable and carbon neutral.",
        "criteria": [criterion(), criterion("no_vague_terms", weight=2)],
        "metadata": {"sku": "TB-01"},
    }
    body.update(overrides)
    return {key: value for key, value in body.items() if value is not None}
