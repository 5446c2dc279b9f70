"""One trace per audit: submitted through the API, run by a real arq worker, model simulated.

Spans are kept by the SDK's in-memory exporter, on the provider the API and the worker
trace with (shared/tracing.py), as an OTLP endpoint would receive them.
"""

from collections.abc import AsyncIterator
from typing import Any
from uuid import UUID

import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from httpx import AsyncClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from api.app import create_app
from shared.config import Settings
from shared.db import SessionFactory
from tests.factories import audit_request, batch_request
from tests.fixtures.simulator import SimulatorHandle
from tests.rows import load_audit
from tests.worker.conftest import RunWorker, fetch, submit

CLIENT_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN_ID = "00f067aa0ba902b7"


@pytest.fixture
async def app(settings: Settings, spans: InMemorySpanExporter) -> AsyncIterator[FastAPI]:
    """The test's API, built once tracing is on (FastAPI takes the provider when built)."""
    app = create_app(settings)
    async with LifespanManager(app):
        yield app


class Trace:
    """The finished spans of one trace, by name."""

    def __init__(self, spans: InMemorySpanExporter, trace_id: int) -> None:
        self.spans = [s for s in spans.get_finished_spans() if s.context.trace_id == trace_id]

    def named(self, name: str) -> list[ReadableSpan]:
        return [s for s in self.spans if s.name == name]

    def one(self, name: str) -> ReadableSpan:
        found = self.named(name)
        assert len(found) == 1, [s.name for s in self.spans]
        return found[0]

    def children(self, parent: ReadableSpan, name: str) -> list[ReadableSpan]:
        return [s for s in self.named(name) if s.parent and s.parent.span_id == span_id(parent)]


def span_id(span: ReadableSpan) -> int:
    assert span.context is not None
    return int(span.context.span_id)


def times(span: ReadableSpan) -> tuple[int, int]:
    """When the span started and ended, in nanoseconds since the epoch."""
    assert span.start_time is not None
    assert span.end_time is not None
    return span.start_time, span.end_time


def attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


def stored_parent(trace_context: str | None) -> tuple[int, int]:
    """The trace id and parent span id of a W3C `traceparent`: `00-<trace>-<span>-<flags>`."""
    assert trace_context is not None
    version, trace_id, parent_id, _flags = trace_context.split("-")
    assert version == "00"
    return int(trace_id, 16), int(parent_id, 16)


def post_span(spans: InMemorySpanExporter, route: str) -> ReadableSpan:
    posts = [s for s in spans.get_finished_spans() if s.name == f"POST /api/v1{route}"]
    assert len(posts) == 1, [s.name for s in spans.get_finished_spans()]
    return posts[0]


async def test_one_trace_spans_the_post_the_enqueue_the_job_the_model_call_and_the_finish(
    client: AsyncClient,
    run_worker: RunWorker,
    spans: InMemorySpanExporter,
    session_factory: SessionFactory,
    settings: Settings,
) -> None:
    submitted = await submit(client)
    await run_worker()
    audit = await fetch(client, submitted["id"])
    assert audit["status"] == "succeeded", audit["error"]

    post = post_span(spans, "/audits")
    trace = Trace(spans, post.context.trace_id)
    assert post.kind == SpanKind.SERVER
    assert attributes(post)["http.route"] == "/api/v1/audits"
    assert attributes(post)["http.response.status_code"] == 202
    [enqueue] = trace.children(post, "auditq.enqueue")
    assert enqueue.kind == SpanKind.PRODUCER
    assert attributes(enqueue)["messaging.destination.name"] == settings.queue_name
    [job] = trace.children(post, "auditq.run_audit")
    assert job.kind == SpanKind.CONSUMER
    assert attributes(job) | {"auditq.audit_id": audit["id"]} == attributes(job)
    assert attributes(job)["auditq.outcome"] == "succeeded"
    [call] = trace.children(job, f"chat {audit['model']}")
    assert call.kind == SpanKind.CLIENT
    assert attributes(call) | {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": audit["model"],
        "gen_ai.response.model": audit["model"],
        "gen_ai.usage.input_tokens": audit["usage"]["prompt_tokens"],
        "gen_ai.usage.output_tokens": audit["usage"]["completion_tokens"],
    } == attributes(call)
    [finish] = trace.children(job, "auditq.finish")
    assert attributes(finish)["auditq.status"] == "succeeded"
    # The job's span starts with the job, before its claim, and holds its children.
    assert times(enqueue)[0] < times(job)[0] < times(call)[0]
    assert times(finish)[1] <= times(job)[1]
    stored = await load_audit(session_factory, UUID(audit["id"]))
    assert stored_parent(stored.trace_context) == (post.context.trace_id, span_id(post))


async def test_every_attempt_of_a_retried_audit_continues_its_trace(
    client: AsyncClient,
    sim: SimulatorHandle,
    run_worker: RunWorker,
    retry_delays: list[tuple[int, float | None]],
    spans: InMemorySpanExporter,
) -> None:
    sim.script(["500", "ok"])
    submitted = await submit(client)
    await run_worker()
    audit = await fetch(client, submitted["id"])
    assert (audit["status"], audit["attempts"]) == ("succeeded", 2)

    post = post_span(spans, "/audits")
    trace = Trace(spans, post.context.trace_id)
    jobs = sorted(trace.children(post, "auditq.run_audit"), key=lambda s: s.start_time or 0)
    assert [(attributes(j)["auditq.attempt"], attributes(j)["auditq.outcome"]) for j in jobs] == [
        (1, "retry"),
        (2, "succeeded"),
    ]
    [failed_call] = trace.children(jobs[0], f"chat {audit['model']}")
    assert failed_call.status.status_code == StatusCode.ERROR
    assert attributes(failed_call)["error.type"] == "model_server_error"
    [requeue] = trace.children(jobs[0], "auditq.finish")
    assert attributes(requeue)["auditq.status"] == "queued"
    assert len(trace.children(jobs[1], f"chat {audit['model']}")) == 1


async def test_a_batch_is_one_trace_with_every_audit_under_its_post(
    client: AsyncClient, run_worker: RunWorker, spans: InMemorySpanExporter
) -> None:
    response = await client.post("/batches", json=batch_request(size=2))
    assert response.status_code == 202, response.text
    await run_worker()

    post = post_span(spans, "/batches")
    trace = Trace(spans, post.context.trace_id)
    [enqueue] = trace.children(post, "auditq.enqueue")
    assert attributes(enqueue)["messaging.batch.message_count"] == 2
    jobs = trace.children(post, "auditq.run_audit")
    assert len({attributes(j)["auditq.audit_id"] for j in jobs}) == 2
    assert all(len(trace.children(j, "auditq.finish")) == 1 for j in jobs)


async def test_a_client_s_trace_context_is_continued(
    client: AsyncClient, spans: InMemorySpanExporter, session_factory: SessionFactory
) -> None:
    traceparent = f"00-{CLIENT_TRACE_ID}-{CLIENT_SPAN_ID}-01"

    submitted = await submit_with_headers(client, {"traceparent": traceparent})

    post = post_span(spans, "/audits")
    assert f"{post.context.trace_id:032x}" == CLIENT_TRACE_ID
    assert post.parent is not None
    assert f"{post.parent.span_id:016x}" == CLIENT_SPAN_ID
    stored = await load_audit(session_factory, UUID(submitted["id"]))
    assert stored_parent(stored.trace_context) == (int(CLIENT_TRACE_ID, 16), span_id(post))


async def submit_with_headers(client: AsyncClient, headers: dict[str, str]) -> dict[str, Any]:
    response = await client.post("/audits", json=audit_request(), headers=headers)
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_health_probes_are_not_traced(
    client: AsyncClient, spans: InMemorySpanExporter
) -> None:
    assert (await client.get("/health/live")).status_code == 200

    assert spans.get_finished_spans() == ()
