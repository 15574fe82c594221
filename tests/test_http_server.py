"""`RegionProtocol` under a real uvicorn server, in process: what its bounds must leave alone.

The refusals themselves are tried through `domicile serve` (tests/e2e/test_limits.py); here,
with a small ASGI app, the requests that must pass: a body that arrives with its head in one
read, an answer or a body slower than the header timeout, pipelined requests, and a
pipelined head past the bound while an answer is being written (closed after it, nothing
written into it). And a body httptools cannot parse (a bad chunk size) in each state of its
request: the app waiting for it (400, the app told the client left), behind a pipelined
answer (400 after that answer), already answered or being answered (closed, nothing written
after or into the answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import socket
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn

from domicile.config import ServerSettings
from domicile.http_server import protocol_for
from tests.gateway.support import LoopThread
from tests.raw_http import assert_refusal, read_until_closed

MAX_HEAD = 4096
TIMEOUT_S = 0.3
SLOW_S = 3 * TIMEOUT_S  # an answer (or a body) this slow outlasts the header timeout


# What became of each request with a query string, in order: ("?" + it, how its app ended).
OUTCOMES: queue.Queue[tuple[str, str]] = queue.Queue()


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Echoes the body's length; `/slow` answers after SLOW_S; `/early` answers before reading
    the body; `/stream` starts its answer, then reads the body."""
    if scope["type"] != "http":
        return
    query = scope["query_string"].decode()
    try:
        outcome = await echo(scope, receive, send)
    except Exception as exc:
        outcome = type(exc).__name__
        raise
    finally:
        if query:
            OUTCOMES.put((query, outcome))


async def echo(scope: dict[str, Any], receive: Any, send: Any) -> str:
    if scope["path"] == "/early":
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"5")]})
        await send({"type": "http.response.body", "body": b"early"})
        return "answered"
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"x", "more_body": True})
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return "disconnect"
        size += len(message.get("body", b""))
        if not message.get("more_body"):
            break
    if scope["path"] == "/slow":
        await asyncio.sleep(SLOW_S)
    body = b"%d" % size
    if scope["path"] == "/stream":
        await send({"type": "http.response.body", "body": body})
        return "answered"
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})
    return "answered"


@pytest.fixture(scope="module")
def port() -> Iterator[int]:
    loop = LoopThread()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    limits = ServerSettings(max_header_bytes=MAX_HEAD, header_timeout_s=TIMEOUT_S,
                            keepalive_timeout_s=5, max_connections=50)
    config = uvicorn.Config(app, http=protocol_for("eu", limits), ws="none", loop="none",
                            lifespan="off", log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    future = asyncio.run_coroutine_threadsafe(server.serve(sockets=[sock]), loop.loop)

    async def started() -> None:
        while not server.started:
            if future.done():
                future.result()
            await asyncio.sleep(0.01)

    loop.run(started())
    yield sock.getsockname()[1]
    server.should_exit = True
    future.result(15)
    sock.close()
    loop.close()


def read_answers(sock: socket.socket, count: int) -> list[tuple[bytes, bytes]]:
    """`count` answers (status line, body), each read to its content-length."""
    sock.settimeout(20)
    buffer = b""
    answers: list[tuple[bytes, bytes]] = []
    while len(answers) < count:
        while b"\r\n\r\n" not in buffer:
            data = sock.recv(65536)
            assert data, f"closed after {answers!r}; pending {buffer!r}"
            buffer += data
        head, _, buffer = buffer.partition(b"\r\n\r\n")
        length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(buffer) < length:
            data = sock.recv(65536)
            assert data, "closed in the middle of an answer"
            buffer += data
        answers.append((head.split(b"\r\n")[0], buffer[:length]))
        buffer = buffer[length:]
    return answers


def post(path: str, size: int) -> bytes:
    return (b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % (path.encode(), size)
            + b"b" * size)


def test_a_body_read_with_its_head_is_not_counted_as_head(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/", 1024 * 1024))  # head and body in one write
        assert read_answers(sock, 1) == [(b"HTTP/1.1 200 OK", b"1048576")]


def test_an_answer_slower_than_the_header_timeout_is_not_cut(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/slow", 10))
        assert read_answers(sock, 1) == [(b"HTTP/1.1 200 OK", b"10")]
        sock.sendall(post("/", 3))  # and the connection still serves
        assert read_answers(sock, 1) == [(b"HTTP/1.1 200 OK", b"3")]


def test_a_body_slower_than_the_header_timeout_is_not_cut(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        request = post("/", 100)
        sock.sendall(request[:-50])
        # nothing to wait for but time itself: the body's second half comes late
        assert not socket_closes_within(sock, SLOW_S)
        sock.sendall(request[-50:])
        assert read_answers(sock, 1) == [(b"HTTP/1.1 200 OK", b"100")]


def socket_closes_within(sock: socket.socket, seconds: float) -> bool:
    sock.settimeout(seconds)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except TimeoutError:
        return False
    finally:
        sock.settimeout(20)


def test_pipelined_requests_are_all_answered(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/", 1) + post("/slow", 2) + post("/", 3))
        assert [body for _status, body in read_answers(sock, 3)] == [b"1", b"2", b"3"]


def test_a_pipelined_head_past_the_bound_closes_after_the_answer_in_progress(port: int) -> None:
    """The pipelined head is larger than a read (the part of it in the read that ends the
    first request is counted from the next read on), so the bound is crossed whatever the
    reads' boundaries."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        # closed once the answer is written, maybe before all of this is sent: read on below
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(post("/slow", 5) + b"GET / HTTP/1.1\r\nX-Pad: " + b"a" * 1024 * 1024)
        assert read_answers(sock, 1) == [(b"HTTP/1.1 200 OK", b"5")]
        sock.settimeout(20)
        rest = b""
        try:
            while data := sock.recv(65536):
                rest += data
        except ConnectionResetError:
            pass
        assert rest == b""  # closed, nothing written after (or into) the answer


# -- a body httptools cannot parse ----------------------------------------------------------


def outcome_of(query: str) -> str:
    """How the app of the request with this query string ended (once it has)."""
    for _ in range(100):
        got, outcome = OUTCOMES.get(timeout=20)
        if got == query:
            return outcome
    raise AssertionError(f"no outcome for {query!r}")


def chunked(path: str, *headers: bytes) -> bytes:
    return b"".join((b"POST %s HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     % path.encode(), *(header + b"\r\n" for header in headers), b"\r\n"))


BAD_CHUNK = b"zz\r\nabc\r\n0\r\n\r\n"


def test_a_bad_chunk_the_app_waits_for_is_400_and_the_app_hears_the_client_left(
        port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(chunked("/?waiting", b"Expect: 100-continue") + BAD_CHUNK)
        answer = read_until_closed(sock)
    # A `100 Continue` only if the server read the head alone; never one after the 400.
    answer = answer.removeprefix(b"HTTP/1.1 100 Continue\r\n\r\n")
    assert_refusal(answer, 400, "invalid_request")
    assert outcome_of("waiting") == "disconnect"


def test_a_bad_chunk_behind_a_pipelined_answer_is_400_after_it(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(post("/slow", 5) + chunked("/") + BAD_CHUNK)
        answer = read_until_closed(sock)
    head, _, rest = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 OK\r\n") and rest.startswith(b"5"), answer[:300]
    assert_refusal(rest[1:], 400, "invalid_request")


def test_a_bad_chunk_after_its_answer_closes_with_nothing_more(port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(chunked("/early"))
        assert read_answers(sock, 1) == [(b"HTTP/1.1 200 OK", b"early")]
        sock.sendall(BAD_CHUNK)
        assert read_until_closed(sock) == b""


def test_a_bad_chunk_while_being_answered_cuts_the_answer_and_writes_nothing_into_it(
        port: int) -> None:
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(chunked("/stream?streaming"))
        sock.settimeout(20)
        received = b""
        while b"\r\n1\r\nx\r\n" not in received:  # the answer's first chunk
            data = sock.recv(65536)
            assert data, received
            received += data
        sock.sendall(BAD_CHUNK)
        received += read_until_closed(sock)
    assert received.count(b"HTTP/1.1") == 1 and not received.endswith(b"0\r\n\r\n"), received
    assert outcome_of("streaming") == "disconnect"
