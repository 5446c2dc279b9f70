"""The alert rules, dashboards and autoscalers of `deploy/` name metrics auditq exposes.

Every PromQL expression in them is parsed, and each metric it selects (and each label
it matches on) must be one the API's `/metrics` or a worker's metrics serve: a renamed
metric or label would otherwise leave an alert that never fires and a panel that
stays empty, with nothing to say so.
"""

import json
from collections.abc import Iterator
from dataclasses import fields
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import promql_parser
import pytest
import yaml
from httpx import AsyncClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from shared.audits.repository import ClaimedAudit
from shared.audits.runs import AuditEnded, Charged
from shared.audits.status import AuditStatus
from shared.llm.client import ModelRequest
from shared.spend.charges import Charge
from shared.webhooks.vocabulary import DeliveryStatus
from tests.factories import audit_request
from worker.metrics import PrometheusMetrics

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
# Series Prometheus makes itself: the scrape's `up`, and the suffixes of a histogram.
PROMETHEUS_OWN = {"up"}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")
# Labels Prometheus adds to every series it scrapes.
TARGET_LABELS = {"job", "instance"}


def alert_expressions() -> Iterator[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            yield rule["expr"]


def dashboard_expressions() -> Iterator[str]:
    for path in (DEPLOY / "grafana" / "dashboards").glob("*.json"):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                yield target["expr"]


def autoscaler_expressions() -> Iterator[str]:
    keda = yaml.safe_load((DEPLOY / "kubernetes" / "keda-scaledobject.yaml").read_text())
    for trigger in keda["spec"]["triggers"]:
        yield trigger["metadata"]["query"]
    hpa = yaml.safe_load((DEPLOY / "kubernetes" / "hpa.yaml").read_text())
    for metric in hpa["spec"]["metrics"]:
        external = metric["external"]["metric"]
        labels = external["selector"]["matchLabels"]
        matchers = ",".join(f'{name}="{value}"' for name, value in labels.items())
        yield f"{external['name']}{{{matchers}}}"


def every_expression() -> list[str]:
    return [*alert_expressions(), *dashboard_expressions(), *autoscaler_expressions()]


def selectors(node: Any) -> Iterator[promql_parser.VectorSelector]:
    """Every vector selector under a parsed expression."""
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for child_name in ("lhs", "rhs", "expr", "param", "vector_selector"):
        child = getattr(node, child_name, None)
        if child is not None:
            yield from selectors(child)
    for argument in getattr(node, "args", None) or ():
        yield from selectors(argument)


def exposed_series(metrics_text: str) -> dict[str, set[str]]:
    """Series names a scrape of this text gives, each with the labels it carries."""
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics_text):
        names = {family.name}
        if family.type == "counter":
            names = {family.name + "_total"}
        elif family.type == "histogram":
            names = {family.name + suffix for suffix in HISTOGRAM_SUFFIXES}
        labels = {label for sample in family.samples for label in sample.labels}
        for name in names:
            series.setdefault(name, set()).update(labels)
    return series


def worker_series() -> dict[str, set[str]]:
    """What a worker serves once each of its seams has reported."""
    metrics = PrometheusMetrics()
    metrics.model_requested(ModelRequest("gpt-4o-mini", "ok", 0.5, 100, 20))
    # The metrics read an audit's model, priority and age; the rest may stay empty.
    read: dict[str, Any] = {"model": "gpt-4o-mini", "priority": "bulk", "tenant": "acme"}
    read["created_at"] = datetime.now(UTC)
    empty: dict[str, Any] = dict.fromkeys(field.name for field in fields(ClaimedAudit))
    audit = ClaimedAudit(**empty | read)
    metrics.audit_ended(AuditEnded(audit, AuditStatus.FAILED, "model_timeout"))
    metrics.job_retried("model_timeout")
    metrics.rate_limit_waited("gpt-4o-mini")
    metrics.cost_charged(Charged(audit, Charge(100, 20, Decimal("0.000027"))))
    metrics.webhook_tried(DeliveryStatus.PENDING)
    return exposed_series(generate_latest(metrics.registry).decode())


@pytest.mark.parametrize("expression", every_expression())
def test_every_expression_parses(expression: str) -> None:
    assert list(selectors(promql_parser.parse(expression)))


async def test_every_metric_named_in_deploy_is_exposed(client: AsyncClient) -> None:
    await client.post("/audits", json=audit_request())
    await client.get("/audits")
    exposed = exposed_series((await client.get("http://test/metrics")).text)
    exposed.update(worker_series())

    for expression in every_expression():
        for selector in selectors(promql_parser.parse(expression)):
            assert selector.name in exposed or selector.name in PROMETHEUS_OWN, (
                f"{selector.name} in {expression!r} is not a metric auditq exposes"
            )
            labels = {matcher.name for matcher in selector.matchers.matchers}
            unknown = labels - exposed.get(selector.name, set()) - TARGET_LABELS
            assert not unknown, f"{selector.name} has no label {unknown} ({expression!r})"


def test_prometheus_scrapes_the_workers_on_their_metrics_port() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}

    worker_port = jobs["auditq-worker"]["dns_sd_configs"][0]["port"]
    worker_environment = compose["services"]["worker"]["environment"]
    assert worker_environment["METRICS_PORT"] == f"${{METRICS_PORT:-{worker_port}}}"
    assert jobs["auditq-api"]["dns_sd_configs"][0]["port"] == 8000


def test_the_monitoring_profile_mounts_files_that_exist() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    for name in ("prometheus", "grafana"):
        service = compose["services"][name]
        assert service["profiles"] == ["monitoring"]
        for volume in service["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).exists(), f"{name} mounts {source}, which is missing"
