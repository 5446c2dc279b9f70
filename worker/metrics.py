"""A worker process's Prometheus metrics, served on `METRICS_PORT` (off when it is unset).

What the worker's seams tell, in a registry of the process's own:
- `auditq_audits_finished_total{status,error_code,model}`: audits this worker ended,
  `succeeded` (error code empty) or `failed`, counted once their fenced write is written
  (shared/audits/runs.py), and those its reconciler failed because the worker running
  their last attempt stopped (`failed`, `worker_lost`), once that is committed.
  Cancellations are not counted: the API and the batch budgets end those, not a run.
- `auditq_model_request_duration_seconds{model,outcome}` and
  `auditq_model_tokens_total{model,kind}` (`prompt`, `completion`): each request to the
  model as it ends (shared/llm/client.py); `outcome` is `ok` when the provider answered
  with a readable reply, else the error code the request ended with (`model_timeout`,
  `model_rate_limited`, `model_refused`, …). Tokens are those the provider reported and
  charged, whatever became of the attempt.
- `auditq_audit_duration_seconds{priority}`: submit → terminal, from the audit's
  `created_at` (PostgreSQL's clock) to the worker's clock as its end is written; the
  audits counted above, `worker_lost` included.
- `auditq_job_retries_total{reason}`: jobs sent back to the queue to run later: the
  transient error's code, `rate_limit_wait` (no room in `MODEL_*_LIMITS`, before any
  attempt) or `database_unavailable`.
- `auditq_rate_limit_waits_total{model}`: those `rate_limit_wait`s, by model.
- `auditq_model_replies_invalid_total{kind}`: replies rejected as invalid output, by what
  was wrong (`empty`, `not_json`, `shape`, `criterion_ids`, `bounds`, `contradiction`:
  shared/llm/errors.py), the corrected ones and those an audit failed with alike.
- `auditq_model_cost_usd_total{model,tenant}`: USD of the answered calls this worker
  charged to audits (shared/spend/prices.py), counted once their finish write, which
  adds them to the audit's `usage.cost_usd` and its tenant's spend, is written: the
  counter agrees with what the audits say they cost. A model without a price adds
  nothing. The tenant label is bounded by the tenants a deployment has.
- `auditq_webhook_tries_total{status}`: webhook tries this worker's deliverer made and
  recorded, by where their event stands after the try: `delivered`, `pending` (a failed
  try, another to come), `gone` (410) or `expired` (`WEBHOOK_MAX_AGE_S` reached).

Several workers on one host: **one port per process**. A worker binds `METRICS_PORT`,
or the next port up when another process holds it, and so on up to `PORTS_TRIED` ports;
it logs `metrics_serving` with the port it got. Three workers started with
`METRICS_PORT=9100` serve on 9100, 9101 and 9102, and Prometheus scrapes each as a
target of its own (in containers every replica has its own address and the same port).
prometheus-client's multiprocess mode was not chosen: it needs a directory that one
parent prepares and wipes at each start (`PROMETHEUS_MULTIPROC_DIR`), and workers started
by a Procfile, `compose --scale` or `auditq dev` have no such parent; one process would
have to serve the others' files and take them all down with it; and a target per process
keeps Prometheus's own `up` for each worker, and resets of a restarted worker's counters
that `rate()` understands.
"""

import asyncio
import errno
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import structlog
from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

from shared.audits.recovery import WORKER_LOST
from shared.audits.repository import LostAudit
from shared.audits.runs import AuditEnded, Charged
from shared.audits.status import AuditStatus
from shared.llm.client import ModelRequest
from shared.webhooks.vocabulary import DeliveryStatus

log = structlog.get_logger("worker.metrics")

PORTS_TRIED = 100
# A model request takes from a fraction of a second up to OPENAI_TIMEOUT_S (60 s).
_REQUEST_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0, 120.0)
# Submit → terminal: a second with idle workers, hours behind a bulk backlog.
_AUDIT_BUCKETS = (1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0, 86400.0)


class WorkerMetrics(Protocol):
    """What the worker's seams report, as they happen."""

    def model_requested(self, request: ModelRequest) -> None: ...

    def audit_ended(self, ended: AuditEnded) -> None: ...

    def audit_lost(self, lost: LostAudit) -> None: ...

    def job_retried(self, reason: str) -> None: ...

    def rate_limit_waited(self, model: str) -> None: ...

    def reply_invalid(self, kind: str) -> None: ...

    def cost_charged(self, charged: Charged) -> None: ...

    def webhook_tried(self, status: DeliveryStatus) -> None: ...


class Unrecorded:
    """`METRICS_PORT` unset: nothing is recorded."""

    def model_requested(self, request: ModelRequest) -> None:
        pass

    def audit_ended(self, ended: AuditEnded) -> None:
        pass

    def audit_lost(self, lost: LostAudit) -> None:
        pass

    def job_retried(self, reason: str) -> None:
        pass

    def rate_limit_waited(self, model: str) -> None:
        pass

    def reply_invalid(self, kind: str) -> None:
        pass

    def cost_charged(self, charged: Charged) -> None:
        pass

    def webhook_tried(self, status: DeliveryStatus) -> None:
        pass


class PrometheusMetrics:
    """One worker process's metrics, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self._finished = Counter(
            "auditq_audits_finished",
            "Audits this worker ended, by status, error code and model.",
            ["status", "error_code", "model"],
            registry=self.registry,
        )
        self._request_duration = Histogram(
            "auditq_model_request_duration_seconds",
            "Time a request to the model took, by model and outcome (ok or an error code).",
            ["model", "outcome"],
            buckets=_REQUEST_BUCKETS,
            registry=self.registry,
        )
        self._tokens = Counter(
            "auditq_model_tokens",
            "Tokens the provider reported, by model and kind (prompt, completion).",
            ["model", "kind"],
            registry=self.registry,
        )
        self._audit_duration = Histogram(
            "auditq_audit_duration_seconds",
            "Time from an audit's submission to its end, by priority.",
            ["priority"],
            buckets=_AUDIT_BUCKETS,
            registry=self.registry,
        )
        self._retries = Counter(
            "auditq_job_retries",
            "Jobs sent back to the queue to run later, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self._rate_limit_waits = Counter(
            "auditq_rate_limit_waits",
            "Jobs sent back to wait for room in a model's rate limits, by model.",
            ["model"],
            registry=self.registry,
        )
        self._invalid_replies = Counter(
            "auditq_model_replies_invalid",
            "Model replies rejected as invalid output, by kind.",
            ["kind"],
            registry=self.registry,
        )
        self._cost = Counter(
            "auditq_model_cost_usd",
            "USD of the model's answered calls charged to audits, by model and tenant.",
            ["model", "tenant"],
            registry=self.registry,
        )
        self._webhook_tries = Counter(
            "auditq_webhook_tries",
            "Webhook tries this worker made, by where their event stands after it.",
            ["status"],
            registry=self.registry,
        )

    def model_requested(self, request: ModelRequest) -> None:
        self._request_duration.labels(request.model, request.outcome).observe(request.seconds)
        if request.prompt_tokens:
            self._tokens.labels(request.model, "prompt").inc(request.prompt_tokens)
        if request.completion_tokens:
            self._tokens.labels(request.model, "completion").inc(request.completion_tokens)

    def audit_ended(self, ended: AuditEnded) -> None:
        audit = ended.audit
        self._count_end(
            ended.status, ended.error_code, audit.model, audit.priority, audit.created_at
        )

    def audit_lost(self, lost: LostAudit) -> None:
        self._count_end(
            AuditStatus.FAILED, WORKER_LOST, lost.model, lost.run.priority, lost.created_at
        )

    def _count_end(
        self, status: str, error_code: str | None, model: str, priority: str, created_at: datetime
    ) -> None:
        self._finished.labels(status, error_code or "", model).inc()
        took = (datetime.now(UTC) - created_at).total_seconds()
        self._audit_duration.labels(priority).observe(max(0.0, took))

    def job_retried(self, reason: str) -> None:
        self._retries.labels(reason).inc()

    def rate_limit_waited(self, model: str) -> None:
        self._rate_limit_waits.labels(model).inc()

    def reply_invalid(self, kind: str) -> None:
        self._invalid_replies.labels(kind).inc()

    def cost_charged(self, charged: Charged) -> None:
        cost = charged.charge.cost_usd
        if cost is not None:
            self._cost.labels(charged.audit.model, charged.audit.tenant).inc(float(cost))

    def webhook_tried(self, status: DeliveryStatus) -> None:
        self._webhook_tries.labels(status).inc()


class MetricsPortsTaken(Exception):
    """Every port tried was held by another process."""


@dataclass
class MetricsServer:
    """prometheus-client's HTTP server, in a thread of its own, on `port`."""

    port: int
    _server: WSGIServer
    _thread: threading.Thread

    async def close(self) -> None:
        # `shutdown` waits for the serving loop's next turn (up to half a second).
        await asyncio.to_thread(self._shutdown)

    def _shutdown(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


def serve(registry: CollectorRegistry, *, first_port: int) -> MetricsServer:
    """Serve `registry` on the first port from `first_port` up that no process holds."""
    last_port = min(first_port + PORTS_TRIED, 65536)
    for port in range(first_port, last_port):
        try:
            server, thread = start_http_server(port, registry=registry)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        return MetricsServer(port, server, thread)
    raise MetricsPortsTaken(f"ports {first_port} to {last_port - 1} are all in use")


def start(metrics_port: int | None) -> tuple[WorkerMetrics, MetricsServer | None]:
    """The process's metrics, served from `metrics_port` up; unrecorded without a port."""
    if metrics_port is None:
        return Unrecorded(), None
    metrics = PrometheusMetrics()
    server = serve(metrics.registry, first_port=metrics_port)
    log.info("metrics_serving", port=server.port, path="/metrics")
    return metrics, server
