"""The image's HEALTHCHECK: exit 0 when the region's `GET /healthz` answers `{"status": "ok"}`.

A slim image has no curl; this uses only the standard library. The URL comes from
`DOMICILE_HEALTHCHECK_URL` (default `http://127.0.0.1:8400/healthz`). It must name a loopback
address: the probe asks the server in its own container, never anything across the network.
Over https, the certificate is not verified: it is issued for the region's public name, not
for 127.0.0.1, and the question here is only whether the local process answers.
"""

from __future__ import annotations

import ipaddress
import json
import os
import ssl
import sys
import urllib.error
import urllib.request
from urllib.parse import urlsplit

DEFAULT_URL = "http://127.0.0.1:8400/healthz"
TIMEOUT_S = 4.0


def is_loopback(host: str | None) -> bool:
    if host == "localhost":
        return True
    try:
        return host is not None and ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check(url: str) -> str | None:
    """None when healthy, else one line saying why not (never the answer's body)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not is_loopback(parts.hostname):
        return f"DOMICILE_HEALTHCHECK_URL must be an http(s) URL on loopback, not {url!r}"
    context = None
    if parts.scheme == "https":
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # loopback liveness only; see the module's doc
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S, context=context) as answer:  # noqa: S310 - scheme checked above
            body = json.loads(answer.read(4096))
    except urllib.error.HTTPError as exc:
        return f"{url} answered {exc.code}"
    except (OSError, ValueError) as exc:
        return f"{url} did not answer: {type(exc).__name__}"
    if not isinstance(body, dict) or body.get("status") != "ok":
        return f"{url} did not say status ok"
    return None


def main() -> int:
    problem = check(os.environ.get("DOMICILE_HEALTHCHECK_URL") or DEFAULT_URL)
    if problem is not None:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
