"""Clients that submit audits while faults happen, as well-behaved clients would.

Each request carries an `Idempotency-Key`, so a client that got no answer (a connection
cut, a 503 while PostgreSQL restarts) sends it again without creating the audits twice.
"""

import asyncio
import random
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from uuid import uuid4

import httpx

RETRY_PAUSE_S = 0.5
REQUEST_TIMEOUT_S = 30.0
# What a client may see while PostgreSQL restarts: the one 5xx the API may answer.
DATABASE_UNAVAILABLE = (503, "database_unavailable")

_TEXT = (
    "our bamboo toothbrush is fully biodegradable and shipped in recycled cardboard "
    "every order plants a tree through a certified partner and offsets its delivery "
    "the bristles are made from castor oil nylon and the handle from organic bamboo "
    "we publish an annual sustainability report audited by an independent firm"
)
_WORDS = _TEXT.split(" ")
_CRITERIA = [
    {"id": "claims_substantiated", "description": "Every claim is backed by a verifiable source."},
    {"id": "no_vague_terms", "description": "No vague terms such as eco or green.", "weight": 2},
    {"id": "packaging_disclosed", "description": "The packaging and its recycling are stated."},
    {"id": "offsets_explained", "description": "Carbon offsets name their standard."},
]


@dataclass(frozen=True)
class Submission:
    """One request of the plan: a single audit (`POST /audits`) or a small batch."""

    audits: list[dict[str, Any]]
    batch: bool
    key: str = field(default_factory=lambda: uuid4().hex)

    @property
    def path(self) -> str:
        return "/batches" if self.batch else "/audits"

    def body(self) -> dict[str, Any]:
        if self.batch:
            return {"name": f"faults {self.key[:8]}", "audits": self.audits}
        return self.audits[0]


def _audit(rng: random.Random, number: int) -> dict[str, Any]:
    words = rng.choices(_WORDS, k=rng.randint(25, 60))
    return {
        "subject": f"Product page {number}",
        "content": f"Item {number}. " + " ".join(words) + ".",
        "criteria": rng.sample(_CRITERIA, k=rng.randint(2, 4)),
        "metadata": {"number": number},
    }


def plan(
    total: int, *, seed: int = 0, batch_share: float = 0.35, max_batch: int = 8
) -> list[Submission]:
    """`total` audits: about `batch_share` of the requests are batches of 2..`max_batch`."""
    rng = random.Random(seed)
    submissions: list[Submission] = []
    made = 0
    while made < total:
        size = rng.randint(2, max_batch) if rng.random() < batch_share else 1
        size = min(size, total - made)
        audits = [_audit(rng, made + n) for n in range(size)]
        submissions.append(Submission(audits=audits, batch=size > 1))
        made += size
    return submissions


@dataclass
class LoadReport:
    """What the clients saw."""

    audit_ids: list[str] = field(default_factory=list)
    batches: dict[str, int] = field(default_factory=dict)
    statuses: Counter[int] = field(default_factory=Counter)
    server_errors: Counter[str] = field(default_factory=Counter)  # "500 internal_error": n
    database_unavailable: int = 0
    transport_errors: Counter[str] = field(default_factory=Counter)
    replayed: int = 0
    refused: list[str] = field(default_factory=list)  # 4xx: a bug of the plan or of the API
    unsent: int = 0  # submissions still not accepted at the deadline
    wall_s: float = 0.0
    latencies_s: list[float] = field(default_factory=list)  # of every answered request

    @property
    def accepted(self) -> int:
        return len(self.audit_ids) + sum(self.batches.values())

    @property
    def unexpected_5xx(self) -> int:
        return sum(self.server_errors.values())

    def figures(self) -> dict[str, Any]:
        return {
            "audits_accepted": self.accepted,
            "requests": {"audits": len(self.audit_ids), "batches": len(self.batches)},
            "http_statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "api_5xx_unexpected": self.unexpected_5xx,
            "api_5xx_unexpected_by_code": dict(self.server_errors),
            "api_503_database_unavailable": self.database_unavailable,
            "client_transport_errors": dict(self.transport_errors),
            "idempotent_replays": self.replayed,
            "refused_4xx": len(self.refused),
            "unsent": self.unsent,
            "submit_wall_s": round(self.wall_s, 1),
            "submit_latency_ms": latency_figures(self.latencies_s),
        }


async def _send(
    http: httpx.AsyncClient, item: Submission, report: LoadReport, deadline: float
) -> None:
    """Send until the API accepts it; a lost answer or a 503 is retried with the same key."""
    while time.monotonic() < deadline:
        started = time.monotonic()
        try:
            response = await http.post(
                item.path, json=item.body(), headers={"Idempotency-Key": item.key}
            )
            report.latencies_s.append(time.monotonic() - started)
        except httpx.TransportError as exc:
            report.transport_errors[type(exc).__name__] += 1
            await asyncio.sleep(RETRY_PAUSE_S)
            continue
        report.statuses[response.status_code] += 1
        if response.status_code == 202:
            _accepted(item, response, report)
            return
        code = _problem_code(response)
        if (response.status_code, code) == DATABASE_UNAVAILABLE:
            report.database_unavailable += 1
        elif response.status_code >= 500:
            report.server_errors[f"{response.status_code} {code}"] += 1
        else:
            report.refused.append(f"{response.status_code} {response.text[:300]}")
            return
        await asyncio.sleep(RETRY_PAUSE_S)
    report.unsent += 1


def percentile(values: list[float], share: float) -> float:
    """The value `share` of them are at or under (nearest rank)."""
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(share * len(ordered)) - 1))]


def latency_figures(latencies_s: list[float]) -> dict[str, float] | None:
    if not latencies_s:
        return None
    return {
        name: round(percentile(latencies_s, share) * 1000, 1)
        for name, share in (("p50", 0.5), ("p99", 0.99), ("max", 1.0))
    }


def _accepted(item: Submission, response: httpx.Response, report: LoadReport) -> None:
    body = response.json()
    if response.headers.get("Idempotent-Replayed") == "true":
        report.replayed += 1
    if item.batch:
        assert body["counts"]["total"] == len(item.audits), body
        report.batches[body["id"]] = len(item.audits)
    else:
        report.audit_ids.append(body["id"])


def _problem_code(response: httpx.Response) -> str | None:
    try:
        code = response.json().get("code")
    except ValueError:
        return None
    return code if isinstance(code, str) else None


async def submit_concurrently(
    base_url: str,
    submissions: list[Submission],
    report: LoadReport,
    *,
    clients: int = 50,
    pause_s: float = 0.0,
    within: float = 300.0,
    headers: Mapping[str, str] | None = None,
) -> LoadReport:
    """`clients` clients share out the submissions; each pauses `pause_s` between requests.

    `headers` go with every request (`Authorization` under `AUTH=keys`)."""
    pending = iter(submissions)
    deadline = time.monotonic() + within
    started = time.monotonic()
    # One httpx client, a connection per client: each httpx client builds an SSL context
    # (about 20 ms of CPU, even for http), and 20 of them built while the first requests'
    # clocks ran put the harness's own start in the submit p99.
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(
        base_url=base_url, timeout=REQUEST_TIMEOUT_S, headers=headers, limits=limits
    ) as http:

        async def client() -> None:
            for item in pending:
                await _send(http, item, report, deadline)
                await asyncio.sleep(pause_s)

        await asyncio.gather(*(client() for _ in range(clients)))
    report.wall_s = time.monotonic() - started
    return report
