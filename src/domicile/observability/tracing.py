"""Optional OpenTelemetry traces: one span per request, named by its method and route template.

A span carries the region and the answer's status, nothing else: never a path, a header, a
body or an id a client chose. Spans are batched and exported with OTLP/HTTP (protobuf) to
`[observability] otlp_endpoint` by the SDK's background thread, off the request path.

The SDK is the `otel` extra (`pip install 'domicile[otel]'`): without it, `request_tracer`
says so in one log line and returns None, and the server serves without traces.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from domicile.config import ObservabilitySettings

__all__ = ["RequestTracer", "request_tracer", "traces_url"]

log = logging.getLogger("domicile.observability")

# How long a finished span may wait in the batch before it is sent (the SDK's default: 5 s).
EXPORT_DELAY_MS = 2000


def traces_url(endpoint: str) -> str:
    """The OTLP/HTTP traces URL of an endpoint: `http://collector:4318` gets the standard
    `/v1/traces`; an endpoint that names a path is used as it is."""
    if urlsplit(endpoint).path in ("", "/"):
        return endpoint.rstrip("/") + "/v1/traces"
    return endpoint


class RequestTracer:
    """Records finished requests as spans (start and end times given, so the request path only
    calls `record` once, after its answer)."""

    def __init__(self, endpoint: str, region: str) -> None:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
        from opentelemetry.trace import SpanKind

        self._kind = SpanKind.SERVER
        self._provider = TracerProvider(resource=Resource.create(
            {"service.name": "domicile", "domicile.region": region}))
        self._provider.add_span_processor(BatchSpanProcessor(
            OTLPSpanExporter(endpoint=traces_url(endpoint), timeout=5),
            schedule_delay_millis=EXPORT_DELAY_MS))
        self._tracer = self._provider.get_tracer("domicile")
        self._region = region

    def record(self, method: str, route: str, status: int, start_ns: int, end_ns: int) -> None:
        attributes: dict[str, Any] = {"domicile.region": self._region,
                                      "http.response.status_code": status}
        span = self._tracer.start_span(f"{method} {route}", kind=self._kind,
                                       start_time=start_ns, attributes=attributes)
        if status >= 500:
            from opentelemetry.trace import Status, StatusCode

            span.set_status(Status(StatusCode.ERROR))
        span.end(end_time=end_ns)

    def shutdown(self) -> None:
        """Send what is batched, stop the export thread."""
        self._provider.shutdown()


_said_missing = threading.Lock()
_missing_told: set[int] = set()


def request_tracer(settings: ObservabilitySettings, region: str) -> RequestTracer | None:
    """A tracer when `otlp_endpoint` is set and the SDK is installed, else None (and, when
    only the SDK is missing, one log line per process)."""
    if settings.otlp_endpoint is None:
        return None
    try:
        return RequestTracer(settings.otlp_endpoint, region)
    except ImportError:
        with _said_missing:
            if os.getpid() not in _missing_told:
                _missing_told.add(os.getpid())
                log.warning("otlp_endpoint is set but OpenTelemetry is not installed "
                            "(pip install 'domicile[otel]'): serving without traces")
        return None
