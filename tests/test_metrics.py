"""indexer/metrics.py: every metric is atmx_-prefixed, described and registered once; the helpers
count what they say. (That alerts and dashboards name existing metrics is test_deploy.py's.)"""

from __future__ import annotations

from prometheus_client import REGISTRY
from prometheus_client.metrics import MetricWrapperBase

from atmx.indexer import metrics

METRICS = {name: m for name, m in vars(metrics).items() if isinstance(m, MetricWrapperBase)}


def test_every_metric_is_named_atmx_and_described() -> None:
    assert len(METRICS) > 30
    for attribute, metric in METRICS.items():
        name = metric.describe()[0].name
        assert name.startswith("atmx_"), attribute
        assert metric._documentation.strip(), attribute
        assert attribute.isupper(), f"{attribute}: metrics are module constants"


def test_every_metric_is_in_the_default_registry() -> None:
    exported = {family.name for family in REGISTRY.collect()}
    assert {m.describe()[0].name for m in METRICS.values()} <= exported


def test_observe_api_counts_and_times() -> None:
    labels = {"method": "directory.atmx.getIdentity", "status": "200"}
    before = REGISTRY.get_sample_value("atmx_api_requests_total", labels) or 0.0
    count_before = REGISTRY.get_sample_value("atmx_api_request_seconds_count", {"method": labels["method"]}) or 0.0
    metrics.observe_api(labels["method"], 200, 0.003)
    assert REGISTRY.get_sample_value("atmx_api_requests_total", labels) == before + 1
    assert REGISTRY.get_sample_value("atmx_api_request_seconds_count", {"method": labels["method"]}) == count_before + 1


def test_observe_xmtp_call_counts_failures_only() -> None:
    errors = {"env": "metrics-test", "reason": "timeout"}
    metrics.observe_xmtp_call("metrics-test", "GetIdentityUpdates", 0.1, "ok")
    assert REGISTRY.get_sample_value("atmx_xmtp_api_errors_total", errors) is None
    metrics.observe_xmtp_call("metrics-test", "GetIdentityUpdates", 10.0, "timeout")
    assert REGISTRY.get_sample_value("atmx_xmtp_api_errors_total", errors) == 1.0
    count = {"env": "metrics-test", "method": "GetIdentityUpdates"}
    assert REGISTRY.get_sample_value("atmx_xmtp_api_seconds_count", count) == 2.0


def test_observe_identity() -> None:
    labels = {"kind": "did", "outcome": "metrics_test"}
    metrics.observe_identity("did", "metrics_test")
    assert REGISTRY.get_sample_value("atmx_identity_resolutions_total", labels) == 1.0
