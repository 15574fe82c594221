"""A loopback HTTP proxy in front of moto's KMS that adds the key-state rule moto skips.

Real AWS KMS refuses `Decrypt`, `Encrypt` and `GenerateDataKey` under a disabled key
(`DisabledException`) or one pending deletion (`KMSInvalidStateException`); moto 5 (an
emulator) answers them anyway. This proxy asks moto for the key's state (`DescribeKey`) and,
for those three operations, answers as KMS documents; everything else, and the crypto
itself, is moto's: the request is forwarded byte for byte.

`fail_with = (status, code)` makes it answer every request with that KMS error instead
(throttling, a 5xx), as a KMS under load would.
"""

from __future__ import annotations

import http.client
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

_GUARDED = frozenset({"TrentService.Decrypt", "TrentService.Encrypt",
                      "TrentService.GenerateDataKey"})
_REFUSALS = {"Disabled": ("DisabledException", "is disabled."),
             "PendingDeletion": ("KMSInvalidStateException", "is pending deletion.")}


class KmsStateProxy:
    """`KmsStateProxy(moto_url, kms_client)`; `.endpoint_url` while started (a context manager)."""

    def __init__(self, moto_url: str, kms_client: Any) -> None:
        self._upstream = urllib.parse.urlsplit(moto_url)
        self._kms = kms_client
        self.fail_with: tuple[int, str] | None = None
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                json_type = {"Content-Type": "application/x-amz-json-1.1"}
                if proxy.fail_with is not None:
                    status, code = proxy.fail_with
                    error = {"__type": code, "message": "injected by the test proxy"}
                    self._answer(status, json.dumps(error).encode(), json_type)
                    return
                refusal = proxy.refusal(self.headers.get("X-Amz-Target", ""), body)
                if refusal is not None:
                    self._answer(400, refusal, json_type)
                    return
                status, payload, headers = proxy.forward(self.path, dict(self.headers), body)
                self._answer(status, payload, headers)

            def _answer(self, status: int, payload: bytes, headers: dict[str, str]) -> None:
                self.send_response(status)
                for name, value in headers.items():
                    if name.lower() not in ("content-length", "transfer-encoding", "connection",
                                            "server", "date"):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def refusal(self, target: str, body: bytes) -> bytes | None:
        """KMS's error for a guarded operation under a key that is not enabled, else None."""
        if target not in _GUARDED:
            return None
        key_id = json.loads(body or b"{}").get("KeyId")
        if not key_id:
            return None  # moto decides (Decrypt without KeyId: Domicile always sends one)
        try:
            metadata = self._kms.describe_key(KeyId=key_id)["KeyMetadata"]
        except self._kms.exceptions.NotFoundException:
            return None  # moto answers NotFoundException itself
        refused = _REFUSALS.get(metadata["KeyState"])
        if refused is None:
            return None
        code, says = refused
        return json.dumps({"__type": code, "message": f"{metadata['Arn']} {says}"}).encode()

    def forward(self, path: str, headers: dict[str, str], body: bytes
                ) -> tuple[int, bytes, dict[str, str]]:
        connection = http.client.HTTPConnection(self._upstream.hostname or "127.0.0.1",
                                                self._upstream.port, timeout=30)
        try:
            connection.request("POST", path, body=body, headers=headers)
            response = connection.getresponse()
            return response.status, response.read(), dict(response.getheaders())
        finally:
            connection.close()

    def __enter__(self) -> KmsStateProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)
