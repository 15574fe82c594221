"""OpenTelemetry traces: a real OTLP/HTTP export (the SDK's exporter, protobuf over HTTP) to a
loopback collector stand-in that records what it receives. A span per request, named by
method and route template, with the region and status as its only attributes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from domicile.observability.tracing import traces_url
from tests.gateway.support import LoopThread, ServedApp
from tests.observability.conftest import REGIONAL_KEY, gateway, observed_settings

CANARY = "CANARYtrace5e1d2c"


class Collector:
    """Records the body of every POST to /v1/traces and answers an empty export response."""

    def __init__(self) -> None:
        self.exports: list[bytes] = []
        self.paths: list[str] = []
        self.content_types: list[str] = []
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # the http.server API names it so
                body = self.rfile.read(int(self.headers["content-length"]))
                owner.paths.append(self.path)
                owner.content_types.append(self.headers["content-type"])
                owner.exports.append(body)
                answer = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def spans(self) -> list[tuple[str, dict[str, object]]]:
        found = []
        for body in self.exports:
            request = ExportTraceServiceRequest.FromString(body)
            for resource in request.resource_spans:
                for scope in resource.scope_spans:
                    for span in scope.spans:
                        attributes = {a.key: (a.value.string_value or a.value.int_value)
                                      for a in span.attributes}
                        found.append((span.name, attributes))
        return found

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def collector() -> Iterator[Collector]:
    running = Collector()
    yield running
    running.close()


def test_spans_are_named_by_route_template_and_carry_no_content(
        loop: LoopThread, tmp_path: Path, collector: Collector) -> None:
    served = ServedApp(loop, gateway(observed_settings(tmp_path, otlp_endpoint=collector.url)))
    auth = {"authorization": f"Bearer {REGIONAL_KEY}"}
    try:
        with httpx.Client(base_url=served.url, timeout=20, headers=auth) as client:
            assert client.post("/v1/chat/completions", json={
                "model": "dev-echo",
                "messages": [{"role": "user", "content": CANARY}]}).status_code == 200
            assert client.get(f"/v1/files/file-{CANARY}").status_code == 404
            assert client.get(f"/v1/{CANARY}?q={CANARY}").status_code == 404
    finally:
        served.stop()  # the gateway's shutdown sends the batched spans
    assert collector.paths and set(collector.paths) == {"/v1/traces"}
    assert set(collector.content_types) == {"application/x-protobuf"}
    spans = collector.spans()
    assert [name for name, _ in spans] == [
        "POST /v1/chat/completions", "GET /v1/files/{file_id}", "GET unmatched"]
    assert [attributes for _, attributes in spans] == [
        {"domicile.region": "eu", "http.response.status_code": status}
        for status in (200, 404, 404)]
    assert not any(CANARY.encode() in body for body in collector.exports)


def test_the_traces_url_of_an_endpoint() -> None:
    assert traces_url("http://collector:4318") == "http://collector:4318/v1/traces"
    assert traces_url("http://collector:4318/") == "http://collector:4318/v1/traces"
    assert traces_url("https://otel.example/custom/traces") == "https://otel.example/custom/traces"


def test_without_the_otel_extra_serving_goes_on_and_says_so_once(tmp_path: Path) -> None:
    """In a child process where the exporter cannot be imported (as when the extra is not
    installed): no tracer, one warning line however many regions ask."""
    script = (
        "import sys, logging\n"
        "sys.modules['opentelemetry.exporter.otlp.proto.http.trace_exporter'] = None\n"
        "from domicile.observability.logs import configure_logging\n"
        "from domicile.observability.tracing import request_tracer\n"
        "from domicile.config import ObservabilitySettings\n"
        "configure_logging('json', 'info')\n"
        "wanted = ObservabilitySettings(otlp_endpoint='http://127.0.0.1:9/v1/traces')\n"
        "print([request_tracer(wanted, region) for region in ('eu', 'us')])\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, check=True)
    assert done.stdout.strip() == "[None, None]"
    lines = [json.loads(line) for line in done.stderr.splitlines()]
    assert len(lines) == 1 and "OpenTelemetry is not installed" in lines[0]["message"]
