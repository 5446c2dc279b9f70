"""Traces are off without `OTEL_EXPORTER_OTLP_ENDPOINT`, and go there over OTLP/HTTP with it.

The end-to-end trace of an audit is tested in tests/worker/test_traces.py.
"""

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import cast
from uuid import uuid4

import pytest
from opentelemetry import context
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    set_span_in_context,
)

from shared import tracing
from shared.config import Settings
from tests.conftest import ROOT


@dataclass
class Collector:
    """An OTLP/HTTP collector on a local port: the requests it received."""

    url: str
    received: list[tuple[str, str, bytes]] = field(default_factory=list)


@pytest.fixture
def collector() -> Iterator[Collector]:
    received: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            received.append((self.path, self.headers["Content-Type"], body))
            self.send_response(200)
            self.send_header("Content-Type", "application/x-protobuf")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            """Quiet."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield Collector(f"http://127.0.0.1:{server.server_address[1]}", received)
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.fixture
def untraced() -> Iterator[None]:
    """No provider before the test, and none left after it."""
    tracing.install(None)
    yield
    provider = tracing.provider()
    tracing.install(None)
    if provider is not None:
        cast(TracerProvider, provider).shutdown()


def test_off_without_an_endpoint_the_sdk_and_the_exporter_are_never_imported() -> None:
    """Checked in a fresh interpreter: the suite itself imports the SDK for its tests."""
    probe = (
        "import sys\n"
        "from api.app import create_app\n"
        "from shared import tracing\n"
        "from shared.config import Settings\n"
        "import worker.settings\n"
        "create_app(Settings(otel_exporter_otlp_endpoint=None))\n"
        "assert tracing.provider() is None and tracing.current_context() is None\n"
        "loaded = [m for m in sys.modules if m.startswith(('opentelemetry.sdk', "
        "'opentelemetry.exporter'))]\n"
        "assert not loaded, loaded\n"
    )
    environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, env=environment, check=True, capture_output=True
    )


def test_off_every_span_is_the_invalid_one_and_nothing_is_stored(untraced: None) -> None:
    tracing.configure(Settings(otel_exporter_otlp_endpoint=None), service="auditq-worker")

    with tracing.finish_span() as span:
        assert not span.is_recording()
        assert tracing.current_context() is None
    assert tracing.provider() is None


@pytest.mark.parametrize("where", ["environment", "dotenv"])
def test_on_spans_go_to_the_endpoint_over_otlp_http(
    untraced: None, collector: Collector, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """The SDK reads the variable from the environment; from `.env`, only auditq does."""
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    if where == "environment":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url)
    tracing.configure(Settings(otel_exporter_otlp_endpoint=collector.url), service="auditq-worker")

    with tracing.finish_span():
        pass
    cast(TracerProvider, tracing.provider()).force_flush()

    [(path, content_type, body)] = collector.received
    assert (path, content_type) == ("/v1/traces", "application/x-protobuf")
    assert b"auditq.finish" in body
    assert b"auditq-worker" in body


def test_otel_service_name_names_the_service(
    untraced: None, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_SERVICE_NAME", "audits-eu")
    tracing.configure(Settings(otel_exporter_otlp_endpoint=collector.url), service="auditq-api")

    with tracing.finish_span():
        pass
    cast(TracerProvider, tracing.provider()).force_flush()

    [(_, _, body)] = collector.received
    assert b"audits-eu" in body
    assert b"auditq-api" not in body


def test_otel_sdk_disabled_keeps_it_off(untraced: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")

    tracing.configure(Settings(otel_exporter_otlp_endpoint="http://127.0.0.1:9"), service="x")

    assert tracing.provider() is None


def test_an_attempt_continues_the_stored_context_tracestate_and_all(
    spans: InMemorySpanExporter,
) -> None:
    parent = SpanContext(
        trace_id=0x4BF92F3577B34DA6A3CE929D0E0E4736,
        span_id=0x00F067AA0BA902B7,
        is_remote=True,
        trace_flags=TraceFlags(TraceFlags.SAMPLED),
        trace_state=TraceState([("vendor", "opaque value")]),
    )
    token = context.attach(set_span_in_context(NonRecordingSpan(parent)))
    try:
        stored = tracing.current_context()
    finally:
        context.detach(token)
    assert stored == "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 vendor=opaque value"

    with tracing.attempt_span(stored, audit_id=uuid4(), attempt=1, started_ns=1):
        pass

    attempt = spans.get_finished_spans()[-1]
    assert attempt.parent is not None
    assert (attempt.parent.trace_id, attempt.parent.span_id) == (parent.trace_id, parent.span_id)
    assert attempt.context is not None
    assert attempt.context.trace_state == parent.trace_state
    assert attempt.start_time == 1


def test_an_attempt_without_a_stored_context_starts_a_trace(
    spans: InMemorySpanExporter,
) -> None:
    with (
        tracing.enqueue_span(queue="q", jobs=1),
        tracing.attempt_span(None, audit_id=uuid4(), attempt=1, started_ns=1),
    ):
        pass

    attempt = next(s for s in spans.get_finished_spans() if s.name == "auditq.run_audit")
    assert attempt.parent is None
