"""What the benchmarks send: a 1 KB audit, as a client of a product catalogue would."""

import json
from typing import Any

AUDIT_BYTES = 1024

_CONTENT = (
    "Meet the Everyday Bottle: double-walled stainless steel that keeps drinks cold for "
    "24 hours and hot for 12. Made from 90% recycled steel, it is certified carbon neutral "
    "by ClimatePartner and ships in plastic-free packaging. The powder coat is free of BPA "
    "and lead. Our factory in Porto runs on 100% renewable electricity, and every bottle "
    "sold funds the removal of one kilogram of ocean plastic through our partner, Seas "
    "Clean. Dishwasher safe; lifetime warranty against rust. "
)

_CRITERIA = [
    {
        "id": "claims_substantiated",
        "description": "Every environmental claim names a certification, a partner or data.",
        "weight": 2,
    },
    {
        "id": "no_vague_terms",
        "description": "No vague terms such as eco-friendly, green or natural without detail.",
    },
    {
        "id": "offsets_disclosed",
        "description": "Carbon neutrality claims say whether they rely on offsets.",
        "weight": 1.5,
    },
]


def audit_body(index: int = 0, *, size: int = AUDIT_BYTES) -> dict[str, Any]:
    """A valid `POST /audits` body of `size` bytes as compact JSON (padded content)."""
    body: dict[str, Any] = {
        "subject": f"Product page {index:07d}: Everyday Bottle 750 ml",
        "content": _CONTENT,
        "criteria": _CRITERIA,
        "metadata": {"sku": f"EB-750-{index:07d}", "source": "bench"},
    }
    short = size - len(json.dumps(body, separators=(",", ":")))
    if short > 0:
        repeats = _CONTENT * (short // len(_CONTENT) + 1)
        body["content"] = _CONTENT + repeats[:short]
    return body


def audit_json(index: int = 0) -> str:
    return json.dumps(audit_body(index), separators=(",", ":"))


def batch_body(size: int, *, name: str = "bench batch") -> dict[str, Any]:
    return {"name": name, "audits": [audit_body(i) for i in range(size)]}
