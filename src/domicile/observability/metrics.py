"""The region's Prometheus metrics (served at `GET /metrics`): counts and timings, never
content. Labels are closed sets: region, provider name, route template, status, reason."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

__all__ = ["RATE_LIMIT_FALLBACKS", "REGISTRY"]

REGISTRY = CollectorRegistry(auto_describe=True)

# Requests decided without the shared limiter because Redis did not answer (docs/deploy.md:
# the policy is to keep serving, each process limiting on its own meanwhile).
RATE_LIMIT_FALLBACKS = Counter(
    "domicile_rate_limit_fallbacks_total",
    "Rate-limit decisions made in-process because the shared store (Redis) was unavailable",
    ["region"], registry=REGISTRY,
)
