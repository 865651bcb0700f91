"""Metrics as the tests read them: through the registry, like a scrape, never a metric's internals."""

from __future__ import annotations

from prometheus_client import REGISTRY


def sample(name: str, /, **labels: str) -> float:
    """The current value of one sample (`atmx_..._total` for counters); 0 before its first use."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
