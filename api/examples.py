"""Request bodies the interactive docs start from: each one is accepted as it stands.

Swagger UI's "Try it out" otherwise builds a body from the schema, with `"string"`
for the model and both `criteria` and `rubric`, which the API refuses. The first
example of an operation is the one it shows; tests/api/test_examples.py sends
every example, in the order of `EXAMPLES`, and expects it accepted.
"""

from typing import Any

from fastapi import FastAPI

_CONTENT = "Our bottle is 100% recyclable and made from ocean plastic. Certified carbon neutral."
_CRITERIA = [
    {
        "id": "specific_claims",
        "description": "Environmental claims are specific, not vague",
        "weight": 2,
    },
    {"id": "evidence", "description": "Claims cite a certification or evidence"},
]
_RUBRIC = {
    "name": "green-claims",
    "description": "Are environmental claims specific and substantiated?",
    "criteria": _CRITERIA,
}
_AUDIT = {"subject": "Eco bottle product page", "content": _CONTENT, "criteria": _CRITERIA}
_RUBRIC_AUDIT = {
    "subject": "Eco bottle product page",
    "content": _CONTENT,
    "rubric": "green-claims",
    "metadata": {"sku": "BTL-ECO-1"},
}


def _example(summary: str, value: dict[str, Any]) -> dict[str, Any]:
    return {"summary": summary, "value": value}


# (method, path under the API prefix) → named examples, the one shown first first.
EXAMPLES: dict[tuple[str, str], dict[str, dict[str, Any]]] = {
    ("post", "/rubrics"): {
        "green_claims": _example("A rubric of two criteria", _RUBRIC),
    },
    ("post", "/audits"): {
        "inline_criteria": _example("Criteria given inline", _AUDIT),
        "rubric": _example(
            "A published rubric (publish `green-claims` with POST /rubrics first)", _RUBRIC_AUDIT
        ),
    },
    ("post", "/batches"): {
        "two_audits": _example(
            "Two audits, accepted or refused together",
            {
                "name": "nightly product pages",
                "audits": [_AUDIT, {**_AUDIT, "subject": "Eco bottle, second page"}],
            },
        ),
    },
}


def document_examples(app: FastAPI, *, prefix: str) -> None:
    """Put `EXAMPLES` on the JSON request bodies of the OpenAPI document."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        document = build()
        for (method, path), examples in EXAMPLES.items():
            body = document["paths"][prefix + path][method]["requestBody"]
            body["content"]["application/json"]["examples"] = examples
        return document

    app.openapi = openapi  # type: ignore[method-assign]
