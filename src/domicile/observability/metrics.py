"""The region's Prometheus metrics (served at `GET /metrics`): counts and timings, never
content. Labels are closed sets: region, provider name, route template, status, reason.

The request path pays a dict lookup and a few lock-guarded float additions per request: each
labelled child is made once (`labels()` costs a few microseconds) and kept in a plain dict
keyed by its label values (`RequestMetrics`, `TokenMetrics`).

With `domicile serve --workers N` (N > 1) the parent calls `enable_multiprocess` before it
forks: every worker then writes its values to memory-mapped files in a private folder, and
`/metrics` of any worker answers the sum of all of them (`exposition`).
"""

from __future__ import annotations

import os
from pathlib import Path

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
    values,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

__all__ = [
    "CONTENT_TYPE",
    "FAIL_CLOSED",
    "FAIL_CLOSED_REASONS",
    "PROVIDER_ERRORS",
    "PROVIDER_ERROR_REASONS",
    "RATE_LIMIT_FALLBACKS",
    "REGISTRY",
    "REQUESTS",
    "REQUEST_DURATION",
    "TOKENS",
    "UNMATCHED_ROUTE",
    "RequestMetrics",
    "TokenMetrics",
    "count_fail_closed",
    "count_provider_error",
    "enable_multiprocess",
    "exposition",
    "provider_error_reason",
]

REGISTRY = CollectorRegistry(auto_describe=True)
# The classic text format (every name here is a legacy-valid one): what every Prometheus reads.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4.encode()
# The route label of a request no route serves: its path is client text, never a label.
UNMATCHED_ROUTE = "unmatched"

REQUESTS = Counter(
    "domicile_requests_total",
    "HTTP requests answered, by route template (never the path), method and status",
    ["region", "route", "method", "status"], registry=REGISTRY,
)
REQUEST_DURATION = Histogram(
    "domicile_request_duration_seconds",
    "Time from a request's head to the end of its answer, by route template",
    ["region", "route"], registry=REGISTRY,
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
             30.0, 60.0),
)
TOKENS = Counter(
    "domicile_tokens_total",
    "Tokens counted from providers' answers (kind: prompt or completion)",
    ["region", "provider", "kind"], registry=REGISTRY,
)
PROVIDER_ERRORS = Counter(
    "domicile_provider_errors_total",
    "Provider calls that failed and were failed over (reason: a closed set of error classes)",
    ["region", "provider", "reason"], registry=REGISTRY,
)
FAIL_CLOSED = Counter(
    "domicile_fail_closed_total",
    "Requests refused to keep a guarantee (residency, retention, erasure, key service)",
    ["region", "reason"], registry=REGISTRY,
)
# Requests decided without the shared limiter because Redis did not answer (docs/deploy.md:
# the policy is to keep serving, each process limiting on its own meanwhile).
RATE_LIMIT_FALLBACKS = Counter(
    "domicile_rate_limit_fallbacks_total",
    "Rate-limit decisions made in-process because the shared store (Redis) was unavailable",
    ["region"], registry=REGISTRY,
)

# Error codes (`DomicileError.code`) whose refusal protects a guarantee, and their reason
# label. A closed set: any other refusal is not a fail-closed event.
FAIL_CLOSED_REASONS: dict[str, str] = {
    "wrong_region": "wrong_region",
    "zero_retention": "zero_retention",
    "no_in_region_provider": "no_in_region_provider",
    "tenant_erased": "tenant_erased",
    "tenant_key_refused": "tenant_key_refused",
    "cross_region_write": "cross_region_write",
    "content_store_unavailable": "content_store_unavailable",
    "key_service_unavailable": "key_service_unavailable",
}

PROVIDER_ERROR_REASONS = frozenset(
    {"busy", "http_5xx", "timeout", "connection", "stream_broken", "unavailable"})


def provider_error_reason(reason: str, *, busy: bool = False, mid_stream: bool = False
                          ) -> str:
    """The closed-set label of a `ProviderUnavailable.reason` (a type name, `HTTP 503`, ...);
    `mid_stream`: the stream had begun (a timeout stays a timeout)."""
    if busy:
        return "busy"
    if reason.startswith("HTTP "):
        return "http_5xx"
    if "Timeout" in reason or reason.startswith("no data for"):
        return "timeout"
    if reason.startswith("it ended"):
        return "stream_broken"
    if reason in ("not started", "closed"):
        return "unavailable"
    return "stream_broken" if mid_stream else "connection"


def count_provider_error(region: str, provider: str, reason: str, *, busy: bool = False,
                         mid_stream: bool = False) -> None:
    """A failed provider call (rare: a label lookup is fine here)."""
    PROVIDER_ERRORS.labels(region, provider, provider_error_reason(
        reason, busy=busy, mid_stream=mid_stream)).inc()


def count_fail_closed(region: str, code: str) -> None:
    """A refusal by error code; codes outside `FAIL_CLOSED_REASONS` are not counted."""
    reason = FAIL_CLOSED_REASONS.get(code)
    if reason is not None:
        FAIL_CLOSED.labels(region, reason).inc()


class RequestMetrics:
    """One region's request counter and latency histogram, children cached by label values.

    `observe` is the request path's only call: two dict lookups after the first request of a
    (route, method, status), then two counter additions and a histogram bucket."""

    __slots__ = ("_counted", "_region", "_timed")

    def __init__(self, region: str) -> None:
        self._region = region
        self._counted: dict[tuple[str, str, int], Counter] = {}
        self._timed: dict[str, Histogram] = {}

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        # Keyed by the label, not the client's method: the cache stays as small as the labels.
        key = (route, method if method in _METHODS else "other", status)
        counter = self._counted.get(key)
        if counter is None:
            counter = self._counted[key] = REQUESTS.labels(self._region, *key[:2], str(status))
        counter.inc()
        timer = self._timed.get(route)
        if timer is None:
            timer = self._timed[route] = REQUEST_DURATION.labels(self._region, route)
        timer.observe(seconds)


class TokenMetrics:
    """One region's token counters, children cached by provider name."""

    __slots__ = ("_by_provider", "_region")

    def __init__(self, region: str) -> None:
        self._region = region
        self._by_provider: dict[str, tuple[Counter, Counter]] = {}

    def add(self, provider: str | None, prompt: int, completion: int) -> None:
        if not (prompt or completion):
            return
        name = provider or "none"
        pair = self._by_provider.get(name)
        if pair is None:
            pair = self._by_provider[name] = (TOKENS.labels(self._region, name, "prompt"),
                                             TOKENS.labels(self._region, name, "completion"))
        if prompt > 0:
            pair[0].inc(prompt)
        if completion > 0:
            pair[1].inc(completion)


# Methods are client text too: anything but the standard ones is one label.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def enable_multiprocess(directory: Path) -> None:
    """Make every metric value made from now on live in `directory` (prometheus_client's
    multiprocess mode): call in the parent before forking workers, before any request."""
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


def exposition() -> bytes:
    """The metrics in Prometheus' text format: this process's, or with multiprocess mode on,
    the sum over every worker's files."""
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if directory and getattr(values.ValueClass, "_multiprocess", False):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=directory)  # type: ignore[no-untyped-call]
        return generate_latest(merged)
    return generate_latest(REGISTRY)
