"""The FastAPI application: `uvicorn api.app:create_app --factory`."""

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import RedirectResponse
from fastapi.telemetry import TelemetryConfig
from fastapi_offline import FastAPIOffline
from starlette.exceptions import HTTPException

from api import problems
from api.auth import Forbidden, Unauthorized
from api.bodies import BodyBudget
from api.dashboard.pages import add_dashboard
from api.docs_policy import confine_docs_pages
from api.examples import document_examples
from api.memory import freeze_startup_objects
from api.metrics import ApiMetrics, metrics_page
from api.middleware import RequestGate, TrustedHosts
from api.openapi import document_bearer_keys, document_problems_as_sent, problem_of
from api.routes import audits, batches, health, rubrics, status
from api.streams import StreamSlots
from shared import tracing
from shared.config import Settings, get_settings
from shared.db import DATABASE_ERRORS, create_engine, create_session_factory
from shared.errors import AppError
from shared.logging import configure_logging
from shared.queue import create_redis
from shared.secret import secret_key
from shared.spend.prices import PriceTable
from shared.tenants.directory import Directory
from shared.tenants.quotas import SubmitRate
from shared.webhooks.addresses import CallbackPolicy

API_PREFIX = "/api/v1"
# Probes and scrapers, every few seconds: traces of them would bury the audits'.
_UNTRACED = (f"{API_PREFIX}/health/", "/metrics")


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    app.state.engine = create_engine(settings)
    app.state.session_factory = create_session_factory(app.state.engine)
    app.state.redis = create_redis(settings)
    app.state.submit_rate = SubmitRate(app.state.redis, key_prefix=f"{settings.queue_name}:tenants")
    app.state.directory = Directory(app.state.engine, settings)
    await app.state.directory.start()
    # Budgeted batches need their models' prices: the maintained table loads now, in a
    # second, rather than in the first such request.
    app.state.prices = PriceTable.of(settings)
    await asyncio.to_thread(app.state.prices.warm, settings.models)
    freeze_startup_objects()
    try:
        yield
    finally:
        await app.state.directory.stop()
        await app.state.redis.aclose()
        await app.state.engine.dispose()


def _add_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(AppError, problems.app_error)
    app.add_exception_handler(RequestValidationError, problems.validation_error)
    app.add_exception_handler(HTTPException, problems.http_error)
    for error in DATABASE_ERRORS:
        app.add_exception_handler(error, problems.database_unavailable)
    app.add_exception_handler(Exception, problems.internal_error)


def _telemetry() -> TelemetryConfig:
    """FastAPI's own request spans, on auditq's tracer provider (shared/tracing.py).

    Off when that is off. Only a span per request: none per dependency, endpoint or
    serialization, so a submit's enqueue hangs under its POST; and none of FastAPI's
    OpenTelemetry metrics or logs, which Prometheus and structlog already give.
    """
    provider = tracing.provider()
    return {
        "tracer_provider": provider,
        "tracing": provider is not None,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "auto_configure": False,
        "exclude": lambda scope: str(scope["path"]).startswith(_UNTRACED),
    }


async def root() -> RedirectResponse:
    """`/` leads to the interactive docs rather than to a 404."""
    return RedirectResponse("/docs")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)
    tracing.configure(settings, service="auditq-api")
    # The docs pages from assets shipped in the package (fastapi-offline), not a CDN:
    # they work offline and behind a firewall.
    app = FastAPIOffline(
        title="auditq",
        summary="Audit content against criteria with a language model, at scale.",
        version="0.1.0",
        lifespan=lifespan,
        # A redirect would be built from the client's Host header: a 404 instead.
        redirect_slashes=False,
        telemetry=_telemetry(),
    )
    confine_docs_pages(app)
    app.state.settings = settings
    app.state.cursor_key = secret_key(settings)
    app.state.result_streams = StreamSlots(settings.max_result_streams)
    app.state.tenant_gates = {}  # api/deps.py, tenant_gate
    app.state.path_templates = {}  # api.deps.set_location
    app.state.callback_policy = CallbackPolicy(allow_private=settings.webhook_allow_private)
    # Every route of these authenticates (`CurrentCaller`); without keys the document
    # must not ask clients for a bearer token they don't need.
    guarded = settings.uses_keys
    for router in (audits.router, batches.router, rubrics.router):
        app.include_router(
            router, prefix=API_PREFIX, responses=problem_of(Unauthorized) if guarded else None
        )
    # An admin key's: without keys every caller is one, and nothing is refused.
    admin_only = {**problem_of(Unauthorized), **problem_of(Forbidden)} if guarded else None
    app.include_router(status.router, prefix=API_PREFIX, responses=admin_only)
    app.state.status_cache = status.StatusCache()
    app.include_router(health.router, prefix=API_PREFIX)
    app.state.metrics = ApiMetrics()
    for router in (audits.router, batches.router, rubrics.router, status.router, health.router):
        app.state.metrics.name_routes(router, prefix=API_PREFIX)
    app.add_api_route("/", root, include_in_schema=False)
    app.add_api_route("/problems/{code}", problems.describe_problem, include_in_schema=False)
    app.add_api_route("/metrics", metrics_page, include_in_schema=False)
    add_dashboard(app)
    _add_error_handlers(app)
    document_problems_as_sent(app)
    if guarded:
        document_bearer_keys(app)
    document_examples(app, prefix=API_PREFIX)
    bodies = BodyBudget(
        budget_bytes=settings.max_inflight_body_bytes,
        max_body_bytes=settings.max_body_bytes,
        read_timeout_s=settings.request_read_timeout_s,
    )
    # Probes and scrapers come by address: health and metrics answer whatever the `Host`.
    hosts = TrustedHosts(
        settings.allowed_hosts, exempt_prefixes=(f"{API_PREFIX}/health/", "/metrics")
    )
    app.add_middleware(RequestGate, hosts=hosts, bodies=bodies, metrics=app.state.metrics)
    # Outside the gate, so every answer, the gate's refusals included, carries CORS headers;
    # a preflight is CORS's alone to answer.
    if settings.cors_origins:  # without origins it would answer no request differently
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Location", "X-Request-ID", "Idempotent-Replayed"],
        )
    return app
