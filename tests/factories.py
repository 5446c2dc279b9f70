"""Request bodies a well-behaved client would send, to be varied one field at a time."""

from typing import Any


def criterion(id_: str = "claims_substantiated", **overrides: Any) -> dict[str, Any]:
    return {
        "id": id_,
        "description": "Every environmental claim is backed by a verifiable source.",
        **overrides,
    }


def _overridden(body: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """`body` with `overrides` applied; an override of None drops the field."""
    return {key: value for key, value in {**body, **overrides}.items() if value is not None}


def audit_request(**overrides: Any) -> dict[str, Any]:
    """A valid `POST /audits` body; `overrides` replace (or, with None, drop) fields."""
    body: dict[str, Any] = {
        "subject": "Product page: bamboo toothbrush",
        "content": "Our toothbrush is 100% biodegradable and carbon neutral.",
        "criteria": [criterion(), criterion("no_vague_terms", weight=2)],
        "metadata": {"sku": "TB-01"},
    }
    return _overridden(body, overrides)


def batch_request(size: int = 3, **overrides: Any) -> dict[str, Any]:
    """A valid `POST /batches` body of `size` audits, subjects `Page 0`, `Page 1`, …"""
    body: dict[str, Any] = {
        "name": "nightly catalogue",
        "metadata": {"run": "2026-11-30"},
        "audits": [audit_request(subject=f"Page {index}") for index in range(size)],
    }
    return _overridden(body, overrides)


def rubric_request(name: str = "green_claims", **overrides: Any) -> dict[str, Any]:
    """A valid `POST /rubrics` body; `overrides` replace (or, with None, drop) fields."""
    body: dict[str, Any] = {
        "name": name,
        "description": "Environmental claims on product pages.",
        "criteria": [criterion(), criterion("no_vague_terms", weight=2)],
    }
    return _overridden(body, overrides)
