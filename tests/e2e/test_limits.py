"""The bounds of every region's HTTP server (`[server]`), through a real `domicile serve`.

Raw sockets, so that nothing between the test and the server buffers, waits or retries: a
head past `max_header_bytes` is a 431 once the bound is read, whatever follows; memory does
not grow with it; headers sent too slowly and idle connections are closed; a connection past
`max_connections` is answered 503 `server_busy` at once; what httptools cannot parse is a 400
in OpenAI's shape, not uvicorn's plain text, and logged without a byte of it. Answers are read
until the server closes the connection, never from one `recv`.
"""

from __future__ import annotations

import json
import secrets
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.conftest import scan_for_canary
from tests.e2e.harness import Server, Site, init_site
from tests.raw_http import assert_refusal, parse_answer, parse_head, read_until_closed

MAX_HEAD = 8192
HEAD = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"


MAX_CONNECTIONS = 16


@dataclass
class Served:
    site: Site
    server: Server
    us_key: str

    def connect(self, region: str = "eu", timeout: float = 20) -> socket.socket:
        port = self.site.port_base + (0 if region == "eu" else 1)
        return socket.create_connection(("127.0.0.1", port), timeout=timeout)

    def rss_kib(self) -> int:
        status = Path(f"/proc/{self.server.process.pid}/status").read_text()
        line = next(line for line in status.splitlines() if line.startswith("VmRSS:"))
        return int(line.split()[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """One site with small limits; the tests of eu's limits leave us's connections alone,
    so that the cap can be tried there."""
    root = tmp_path_factory.mktemp("limits")
    site = init_site(root / "site")
    limits = {"max_header_bytes": MAX_HEAD, "header_timeout_s": 1, "keepalive_timeout_s": 1,
              "max_connections": MAX_CONNECTIONS}
    site.config.write_text(site.config.read_text() + "\n[server]\n" + "".join(
        f"{key} = {value}\n" for key, value in limits.items()))
    server = Server(site, root)
    try:
        _project, us_key = site.project_key("us")  # while the server starts
        server.wait_ready()
        yield Served(site, server, us_key)
    finally:
        server.stop()


# -- reading answers ----------------------------------------------------------------------


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """One answer with a content-length, leaving the connection as it is."""
    sock.settimeout(20)
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        data = sock.recv(65536)
        assert data, f"closed before an answer: {bytes(buffer)!r}"
        buffer += data
    head, _, body = bytes(buffer).partition(b"\r\n\r\n")
    status, headers = parse_head(head)
    length = int(headers["content-length"])
    while len(body) < length:
        data = sock.recv(65536)
        assert data, "closed in the middle of an answer"
        body += data
    return status, headers, body


def stream_until_answered(sock: socket.socket, chunk: bytes, total: int,
                          timeout: float = 30) -> tuple[bytes, int]:
    """Send `chunk` repeatedly (up to `total` bytes) while reading whatever comes back, until
    the server closes; returns what it sent back and how much was sent."""
    sock.setblocking(False)
    received = bytearray()
    sent = 0
    sending = True
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        writers = [sock] if sending and sent < total else []
        readable, writable, _ = select.select([sock], writers, [], 1)
        if readable:
            try:
                data = sock.recv(65536)
            except ConnectionResetError:
                return bytes(received), sent
            if not data:
                return bytes(received), sent
            received += data
        if writable:
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                sending = False
            except BlockingIOError:
                pass
    raise AssertionError(f"not closed within {timeout} s after {sent} bytes; "
                         f"got {bytes(received)[:200]!r}")


# -- max_header_bytes ---------------------------------------------------------------------


def head_of(size: int, *, end: bool = True) -> bytes:
    """A request head of exactly `size` bytes (with the final empty line, if `end`)."""
    prefix = HEAD + b"X-Pad: "
    tail = b"\r\n\r\n" if end else b""
    return prefix + b"a" * (size - len(prefix) - len(tail)) + tail


def test_a_head_of_exactly_the_bound_is_served_one_byte_more_is_431(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(head_of(MAX_HEAD))
        status, _headers, body = read_response(sock)
    assert status == 200 and json.loads(body)["region"] == "eu"
    # One byte past the bound, and nothing more: the 431 comes without the head's end.
    with served.connect() as sock:
        sock.sendall(head_of(MAX_HEAD + 1, end=False))
        assert_refusal(read_until_closed(sock), 431, "request_header_fields_too_large")


def test_a_50_mb_header_is_refused_with_431(served: Served) -> None:
    with served.connect() as sock:
        sock.sendall(HEAD + b"X-Big: ")
        answer, sent = stream_until_answered(sock, b"a" * 65536, 50 * 1024 * 1024)
    assert_refusal(answer, 431, "request_header_fields_too_large")
    assert sent < 50 * 1024 * 1024  # refused before the whole header was taken


def test_ten_unfinished_20_mb_heads_do_not_grow_the_server(served: Served) -> None:
    before = served.rss_kib()
    line = b"X-Pad: " + b"a" * 8000 + b"\r\n"
    open_heads = []
    try:
        for _ in range(10):
            sock = served.connect()
            open_heads.append(sock)
            sock.sendall(HEAD)
            sent = 0
            try:
                while sent < 20 * 1024 * 1024:  # never the head's end
                    sock.sendall(line)
                    sent += len(line)
            except (BrokenPipeError, ConnectionResetError):
                pass  # refused and closed: the point
        grown_mib = (served.rss_kib() - before) / 1024
    finally:
        for sock in open_heads:
            sock.close()
    assert grown_mib < 40, f"the server grew by {grown_mib:.0f} MiB"


# -- header_timeout_s and keepalive_timeout_s ---------------------------------------------


def test_a_head_sent_one_line_at_a_time_is_cut_off_with_408(served: Served) -> None:
    """A slowloris: one header line every 0.3 s, with header_timeout_s = 1."""
    started = time.monotonic()
    with served.connect() as sock:
        sock.sendall(HEAD)
        for n in range(100):  # 30 s at most
            try:
                sock.sendall(b"X-Slow-%d: y\r\n" % n)
            except (BrokenPipeError, ConnectionResetError):
                break
            readable, _, _ = select.select([sock], [], [], 0.3)
            if readable:
                break
        answer = read_until_closed(sock)
    assert time.monotonic() - started < 15
    assert_refusal(answer, 408, "request_timeout")


def test_idle_connections_are_closed(served: Served) -> None:
    # after an answer (keep-alive)
    with served.connect() as sock:
        sock.sendall(HEAD + b"\r\n")
        status, _headers, _body = read_response(sock)
        assert status == 200
        assert read_until_closed(sock, timeout=10) == b""
    # and a fresh connection that never sends a byte
    with served.connect() as sock:
        assert read_until_closed(sock, timeout=10) == b""


# -- malformed HTTP -----------------------------------------------------------------------


CANARY = f"LIMITS-{secrets.token_hex(12)}"


def malformed(kind: str, key: str) -> bytes:
    """A request httptools cannot parse, with the canary in it."""
    canary = CANARY.encode()
    post = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    if kind == "garbage request line":
        return b"\x16\x03\x01\x00 " + canary + b"\r\n\r\n"
    if kind == "header line without a colon":
        return HEAD + b"X-" + canary + b"\r\n\r\n"
    if kind == "content-length with chunked":
        body = b'{"model": "%s"}' % canary
        return (post + b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n\r\n" % len(body)
                + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body))
    assert kind == "invalid chunk size"
    # With a valid key, so that the app waits for the body: the 400 cannot come after an
    # answer (a 401) however the server's reads split this.
    return (post + b"Authorization: Bearer " + key.encode() + b"\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"zz" + canary + b"\r\n{}\r\n0\r\n\r\n")


@pytest.mark.parametrize("kind", ["garbage request line", "header line without a colon",
                                  "content-length with chunked", "invalid chunk size"])
def test_malformed_http_is_400_in_openais_shape(served: Served, kind: str) -> None:
    region = "us" if kind == "invalid chunk size" else "eu"
    with served.connect(region) as sock:
        sock.sendall(malformed(kind, served.us_key))
        assert_refusal(read_until_closed(sock), 400, "invalid_request", region)
    # Logged by uvicorn (before the answer was written) without a byte of the request.
    assert "Invalid HTTP request received." in served.server.log()
    assert scan_for_canary([served.server.log_path], CANARY) == []


# -- max_connections ----------------------------------------------------------------------


def hold_a_request(served: Served) -> socket.socket:
    """A connection inside the app: a request whose body the gateway waits for (its
    `100 Continue` says so), which no header or idle timeout applies to."""
    sock = served.connect("us")
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Authorization: Bearer " + served.us_key.encode() + b"\r\n"
                 b"Content-Type: application/json\r\nContent-Length: 2\r\n"
                 b"Expect: 100-continue\r\n\r\n")
    received = b""
    while b"\r\n\r\n" not in received:
        data = sock.recv(4096)
        assert data, f"closed: {received!r}"
        received += data
    assert received.startswith(b"HTTP/1.1 100 "), received
    return sock


def test_a_connection_past_the_cap_gets_503_and_the_cap_is_per_region(served: Served) -> None:
    held = []
    try:
        for _ in range(MAX_CONNECTIONS):
            held.append(hold_a_request(served))
        with served.connect("us") as sock:
            sock.sendall(HEAD + b"\r\n")
            headers = assert_refusal(read_until_closed(sock), 503, "server_busy", "us")
        assert headers["retry-after"] == "1"
        # the other region's server has a count of its own
        assert httpx.get(served.site.url("eu") + "/healthz", timeout=10).status_code == 200
        # a slot freed is a slot usable, once the server has seen the close
        held.pop().close()
        for _ in range(100):
            with served.connect("us") as sock:
                sock.sendall(HEAD + b"Connection: close\r\n\r\n")
                status, _headers, _body = parse_answer(read_until_closed(sock))
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200
    finally:
        for sock in held:
            sock.close()
