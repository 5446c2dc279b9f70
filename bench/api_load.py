"""Closed-loop peaks of the two hot API calls, with the server's CPU per request."""

from collections.abc import Mapping, Sequence

from bench.common import Load, Proc, peak_load
from bench.workload import audit_json

OPERATIONS = ("submit", "GET by id")


def api_peak(
    base: str,
    server: Proc,
    operation: str,
    ids: Sequence[object],
    *,
    seconds: float,
    headers: Mapping[str, str] | None = None,
) -> tuple[Load, float]:
    """`submit` (POST /api/v1/audits) or `GET by id` (of random `ids`): one run, and the
    server's CPU ms per request."""
    before = server.cpu_s()
    if operation == "submit":
        load = peak_load(
            base,
            ["/api/v1/audits"],
            method="POST",
            body=audit_json(),
            headers=headers,
            duration_s=seconds,
        )
    else:
        paths = [f"/api/v1/audits/{audit_id}" for audit_id in ids]
        load = peak_load(base, paths, headers=headers, duration_s=seconds)
    return load, (server.cpu_s() - before) * 1000 / max(1, load.requests)
