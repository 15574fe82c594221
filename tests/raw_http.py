"""Raw-socket HTTP/1.1 for the tests of the servers' own bounds and refusals.

Nothing between the test and the server buffers, waits or retries; answers are read until the
server closes the connection (bounded), never from one `recv`.
"""

from __future__ import annotations

import json
import socket


def read_until_closed(sock: socket.socket, timeout: float = 20) -> bytes:
    """Everything the server sends until it closes (a reset after its answer counts as a
    close); an open connection after `timeout` is a failure."""
    sock.settimeout(timeout)
    received = bytearray()
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return bytes(received)
        except TimeoutError:
            raise AssertionError(f"still open after {timeout} s; got {bytes(received)[:200]!r}"
                                 ) from None
        if not data:
            return bytes(received)
        received += data


def parse_head(head: bytes) -> tuple[int, dict[str, str]]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


def parse_answer(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete answer: {raw[:200]!r}"
    status, headers = parse_head(head)
    return status, headers, body


def assert_refusal(raw: bytes, status: int, code: str,
                   region: str = "eu") -> dict[str, str]:
    """`raw` is exactly one answer, in OpenAI's error shape with the transparency headers,
    and then the connection was closed."""
    got, headers, body = parse_answer(raw)
    assert got == status, raw[:300]
    assert headers["content-type"] == "application/json", raw[:300]
    assert len(body) == int(headers["content-length"]), raw[:300]  # nothing after it
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == code
    assert error["type"] == ("invalid_request_error" if status < 500 else "server_error")
    assert error["param"] is None
    assert headers["x-domicile-region"] == region
    assert headers["x-domicile-provider"] == "none"
    assert headers["x-request-id"].startswith("req_")
    assert headers["connection"] == "close"
    return headers
