"""OpenTelemetry traces of audits: on when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, else off.

One trace per audit, from its POST to its last write:

    POST /api/v1/audits          API: FastAPI's own server span (api/app.py)
    ├── auditq.enqueue           API: its job sent to Redis, after the commit
    └── auditq.run_audit         worker: one per attempt, a retried attempt's too
        ├── chat {model}         the model call (OpenTelemetry's GenAI conventions)
        └── auditq.finish        the fenced write of the attempt's outcome

The API stores the context of its request span on the audit row (`trace_context`: the
W3C `traceparent`, and the `tracestate` after a space when there is one), and each
attempt continues it. A worker learns it from its claim, so an attempt's span is opened
once the claim returns, with the time its job started. A job that claims nothing (a
duplicate, or one sent back by the rate limits) has no span.

A batch is one request: its audits all store the batch POST's context, so a batch is one
trace, its POST and its one enqueue with every audit's attempts under them, each told by
`auditq.audit_id`. A trace per audit would cost a span per item at submit to root it,
and a sampler keeps or drops a batch whole this way.

Off, every seam costs one test of a module global, and nothing beyond OpenTelemetry's
API is imported: not the SDK, not the exporter. On, spans go out over OTLP/HTTP in
batches from a background thread, and the SDK reads its usual variables:
`OTEL_SERVICE_NAME` (else `auditq-api`, `auditq-worker`), `OTEL_RESOURCE_ATTRIBUTES`,
`OTEL_TRACES_SAMPLER`, `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`,
`OTEL_BSP_*`; `OTEL_SDK_DISABLED=true` keeps it off.
"""

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from uuid import UUID

from opentelemetry.context import Context
from opentelemetry.trace import INVALID_SPAN, Span, SpanKind, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared.config import Settings

# The row always holds W3C trace context, whatever OTEL_PROPAGATORS says of HTTP headers.
_W3C = TraceContextTextMapPropagator()
_OFF: AbstractContextManager[Span] = nullcontext(INVALID_SPAN)


@dataclass
class _Tracing:
    provider: TracerProvider | None = None
    tracer: Tracer | None = None


_state = _Tracing()


def configure(settings: Settings, *, service: str) -> None:
    """Trace this process when `OTEL_EXPORTER_OTLP_ENDPOINT` is set; once, later calls
    change nothing. `service` names it unless `OTEL_SERVICE_NAME` does."""
    endpoint = settings.otel_exporter_otlp_endpoint
    if _state.provider is not None or not endpoint:
        return
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return
    install(_exporting_provider(endpoint, service=service))


def install(provider: TracerProvider | None) -> None:
    """Trace with `provider` from now on; None stops. Tests hand an in-memory one."""
    _state.provider = provider
    _state.tracer = None if provider is None else provider.get_tracer("auditq")


def provider() -> TracerProvider | None:
    """The provider spans go to; None when tracing is off."""
    return _state.provider


def _exporting_provider(endpoint: str, *, service: str) -> TracerProvider:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create()
    if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        resource = resource.merge(Resource({SERVICE_NAME: service}))
    exporting = SdkTracerProvider(resource=resource)
    exporter = OTLPSpanExporter(endpoint=_traces_url(endpoint))
    exporting.add_span_processor(BatchSpanProcessor(exporter))
    return exporting


def _traces_url(endpoint: str) -> str | None:
    """Where spans go. None: the exporter reads the environment itself, as the SDK always
    does (`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` first). The endpoint came from `.env`
    otherwise, which the SDK never reads: its rule, applied to that value."""
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_ENDPOINT"
    ):
        return None
    return endpoint.rstrip("/") + "/v1/traces"


# --- The trace context on the audit row ------------------------------------------------


def current_context() -> str | None:
    """The current span's context, as an audit row stores it; None when off or untraced."""
    if _state.tracer is None:
        return None
    carrier: dict[str, str] = {}
    _W3C.inject(carrier)
    parent = carrier.get("traceparent")
    if parent is None:
        return None
    state = carrier.get("tracestate")
    return f"{parent} {state}" if state else parent


def _stored(trace_context: str | None) -> Context:
    """What a worker's span continues: the stored context, or a new trace without one."""
    if not trace_context:
        return Context()
    parent, _, state = trace_context.partition(" ")
    carrier = {"traceparent": parent, "tracestate": state} if state else {"traceparent": parent}
    return _W3C.extract(carrier, context=Context())


# --- The spans --------------------------------------------------------------------------


def enqueue_span(*, queue: str, jobs: int) -> AbstractContextManager[Span]:
    """Sending `jobs` audits' jobs to `queue` in one command."""
    if _state.tracer is None:
        return _OFF
    return _state.tracer.start_as_current_span(
        "auditq.enqueue",
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.system": "arq",
            "messaging.operation.type": "send",
            "messaging.destination.name": queue,
            "messaging.batch.message_count": jobs,
        },
    )


def attempt_span(
    trace_context: str | None, *, audit_id: UUID, attempt: int, started_ns: int
) -> AbstractContextManager[Span]:
    """An attempt of an audit, in the trace its row names; its job started at `started_ns`."""
    if _state.tracer is None:
        return _OFF
    return _state.tracer.start_as_current_span(
        "auditq.run_audit",
        context=_stored(trace_context),
        kind=SpanKind.CONSUMER,
        start_time=started_ns,
        attributes={
            "messaging.system": "arq",
            "messaging.operation.type": "process",
            "auditq.audit_id": str(audit_id),
            "auditq.attempt": attempt,
        },
    )


def model_call_span(model: str) -> AbstractContextManager[Span]:
    """One Chat Completions request (GenAI conventions: `chat {gen_ai.request.model}`)."""
    if _state.tracer is None:
        return _OFF
    return _model_call(_state.tracer, model)


@contextmanager
def _model_call(tracer: Tracer, model: str) -> Iterator[Span]:
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": model,
    }
    with tracer.start_as_current_span(
        f"chat {model}", kind=SpanKind.CLIENT, attributes=attributes
    ) as span:
        try:
            yield span
        except Exception as exc:
            # A `ModelError`'s stable code (`model_rate_limited`, …), as the audit records it.
            span.set_attribute("error.type", getattr(exc, "code", type(exc).__qualname__))
            raise


def model_answered(
    span: Span,
    *,
    response_model: str | None,
    input_tokens: int,
    output_tokens: int,
    finish_reason: str | None,
) -> None:
    """What the model said it was and what the call used."""
    if not span.is_recording():
        return
    span.set_attributes(
        {
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
        }
    )
    if response_model:
        span.set_attribute("gen_ai.response.model", response_model)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])


def finish_span() -> AbstractContextManager[Span]:
    """The fenced write of an attempt's outcome, tried again while PostgreSQL restarts."""
    if _state.tracer is None:
        return _OFF
    return _state.tracer.start_as_current_span(
        "auditq.finish",
        attributes={
            "db.system.name": "postgresql",
            "db.collection.name": "audit",
            "db.operation.name": "UPDATE",
        },
    )
