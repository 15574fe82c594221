"""The HTTP/1.1 protocol of every region's server: uvicorn's httptools protocol, with bounds.

uvicorn bounds neither the size of a request's head nor the time it may take to arrive, and
closes a fresh connection that never sends a byte only when the server stops. This subclass
adds, per connection and before anything reaches the app (`[server]` in domicile.toml):

- `max_header_bytes`: the request line and headers together. Bytes are counted as they are
  fed to the parser, which is never fed past the bound; past it: 431, connection closed.
- `header_timeout_s`: from a connection's first byte (or the end of its previous answer) to
  the end of the headers; past it: 408, connection closed.
- `keepalive_timeout_s`: an idle connection (fresh, or between requests) is closed.
- `max_connections`: open connections of this server (one region, one worker); a connection
  past it is answered 503 `server_busy` at once and closed.

What httptools cannot parse (a request line, a header line, Content-Length with chunked, a
chunk's framing) is answered 400 `invalid_request` and the connection closed, instead of
uvicorn's plain-text 400. uvicorn logs it as "Invalid HTTP request received.", nothing of the
request's bytes.

Refusals are answered in OpenAI's error shape with the `x-domicile-*` headers, then the write
side is shut and input is read and dropped for a short while before the close ("lingering
close"), so that a client still sending reads the answer instead of a reset.

The request path pays one flag test per read, a subtraction for reads in a request's head, a
clock read per answer and one timer per connection (re-armed every `header_timeout_s` while
the connection lives); nothing per request is allocated.
"""

from __future__ import annotations

import asyncio
import http
import logging
import random
from asyncio import TimerHandle
from typing import TYPE_CHECKING, Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.server import ServerState

from domicile.config import ServerSettings
from domicile.errors import HeadersTimeout, HeadersTooLarge, InvalidInput, ServerBusy

if TYPE_CHECKING:
    from uvicorn._types import ASGI3Application, ASGIReceiveCallable, ASGISendCallable, Scope

__all__ = ["LINGER_S", "RegionProtocol", "protocol_for"]

log = logging.getLogger("domicile.server")

# How long a refused connection's input is still read (and dropped) before it is closed.
LINGER_S = 2.0
# At most one log line per this many seconds about refused connections, per server.
_BUSY_LOG_EVERY_S = 10.0

_MALFORMED = InvalidInput("The request is not valid HTTP/1.1.")


class RegionProtocol(HttpToolsProtocol):
    """One connection to one region's server. Use `protocol_for`, which binds the limits."""

    limits: ClassVar[ServerSettings] = ServerSettings()
    region_header: ClassVar[bytes] = b""
    # Prepared once per server: (status line, error body, extra headers).
    _too_large: ClassVar[tuple[int, bytes, bytes]]
    _too_slow: ClassVar[tuple[int, bytes, bytes]]
    _busy: ClassVar[tuple[int, bytes, bytes]]
    _malformed: ClassVar[tuple[int, bytes, bytes]] = (_MALFORMED.status, _MALFORMED.body(), b"")
    _busy_logged_at: ClassVar[float] = float("-inf")

    def __init__(self, config: Config, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = self.limits
        # uvicorn types it as int; fractions of a second are fine for call_later.
        self.timeout_keep_alive = limits.keepalive_timeout_s  # type: ignore[assignment]
        self._max_head = limits.max_header_bytes
        self._header_timeout = limits.header_timeout_s
        # Between the end of a message (or the connection's start) and the end of the next
        # request's headers, bytes read count against `_head_left`; -1: refused, input is
        # read and dropped.
        self._in_head = True
        self._head_left = self._max_head
        # When the current head's clock started: its first byte, or the end of the answer
        # before it; None while nothing of it has been read.
        self._head_since: float | None = None
        self._head_timer: TimerHandle | None = None
        self._linger: TimerHandle | None = None

    # -- connection ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.limits.max_connections:
            self._log_busy()
            self._refuse(self._busy)
            return
        loop = self.loop
        # uvicorn arms its idle timer only after an answer: a fresh connection that never
        # sends a byte would stay open for good.
        self.timeout_keep_alive_task = loop.call_later(self.timeout_keep_alive,
                                                       self.timeout_keep_alive_handler)
        self._head_timer = loop.call_later(self._header_timeout, self._check_head)

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._head_timer, self._linger):
            if timer is not None:
                timer.cancel()
        self._head_timer = self._linger = None
        self._unset_keepalive_if_required()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            left = self._head_left - len(data)
            if left < 0 or self._head_since is None:
                self._head_received(data)
                return
            self._head_left = left
        super().data_received(data)

    def _head_received(self, data: bytes | memoryview) -> None:
        """A read in a request's head that is its first, crosses the bound, or is dropped."""
        allowed = self._head_left
        if allowed < 0:
            return
        if self._head_since is None:
            self._head_since = self.loop.time()
        if len(data) <= allowed:
            self._head_left = allowed - len(data)
            super().data_received(data)  # type: ignore[arg-type]
            return
        # The parser gets no more than the bound; whatever follows the end of the headers in
        # this read (a body, a pipelined request) is fed after, counted again if need be.
        view = memoryview(data)
        self._head_left = 0
        if allowed:
            super().data_received(view[:allowed])  # type: ignore[arg-type]
        if self.transport.is_closing() or self._head_left < 0:
            return
        if self._in_head and self._head_left == 0:
            log.info("region %s: request headers over %d bytes refused (431)",
                     self.region_header.decode(), self._max_head)
            self._refuse(self._too_large)
            return
        self.data_received(view[allowed:])  # type: ignore[arg-type]

    # -- parser callbacks ------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._head_since = None
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._head_left < 0:
            return
        self._in_head = True
        self._head_left = self._max_head
        cycle = self.cycle
        if cycle is not None and cycle.response_complete:
            # Answered before its body was read: the next head's clock starts at its first byte.
            self._head_since = None

    def on_response_complete(self) -> None:
        super().on_response_complete()
        cycle = self.cycle
        if self._in_head and (cycle is None or cycle.response_complete):
            self._head_since = self.loop.time()

    # -- timers and refusals ---------------------------------------------------------------

    def _check_head(self) -> None:
        """Once per `header_timeout_s` while the connection lives, exactly at a head's
        deadline while one is being read."""
        self._head_timer = None
        if self.transport.is_closing() or self._head_left < 0:
            return
        loop = self.loop
        now = loop.time()
        since = self._head_since
        cycle = self.cycle
        reading = (self._in_head and since is not None and self._head_left < self._max_head
                   and (cycle is None or cycle.response_complete))
        if reading:
            assert since is not None
            deadline = since + self._header_timeout
            if now >= deadline:
                log.info("region %s: request headers not complete within %ss (408)",
                         self.region_header.decode(), self._header_timeout)
                self._refuse(self._too_slow)
                return
            self._head_timer = loop.call_at(deadline, self._check_head)
            return
        # Idle (the keep-alive timer's job) or busy with a request: look again later.
        self._head_timer = loop.call_at(now + self._header_timeout, self._check_head)

    def send_400_response(self, msg: str) -> None:
        """httptools could not parse what was read (uvicorn has logged `msg`, which holds
        nothing of it): 400 in OpenAI's shape, then close."""
        cycle = self.cycle
        if self.transport.is_closing() or self._head_left < 0:
            return
        if self._in_head or cycle is None:
            # A request line or header: nothing of this request reached the app.
            self._refuse(self._malformed)
            return
        # The body of `cycle`'s request, whose app may be waiting for it.
        if cycle.response_complete:
            # Answered before its body was read: nothing to add.
            self._stop_reading()
            self._close_lingering()
        elif cycle.response_started:
            # Being answered, maybe while waiting for the rest of a body that will never
            # come: cut it, as uvicorn does.
            self._stop_reading()
            self.transport.close()
        else:
            for index, (queued, _app) in enumerate(self.pipeline):
                if queued is cycle:
                    # Behind an answer being written: refused in its turn, in its app's place.
                    self._stop_reading()
                    self.pipeline[index] = (cycle, self._refusal_app(cycle))
                    return
            self._end_cycle(cycle)
            self._refuse(self._malformed)

    def _refusal_app(self, cycle: RequestResponseCycle) -> ASGI3Application:
        async def refuse(_scope: Scope, _receive: ASGIReceiveCallable,
                         _send: ASGISendCallable) -> None:
            self._end_cycle(cycle)
            if not self.transport.is_closing():
                self._answer_and_close(self._malformed)
        return refuse

    @staticmethod
    def _end_cycle(cycle: RequestResponseCycle) -> None:
        """Over without an answer from its app: its `receive` says the client left, what it
        sends is dropped, and no `100 Continue` is written after the refusal."""
        cycle.disconnected = cycle.response_complete = True
        cycle.waiting_for_100_continue = False
        cycle.message_event.set()

    def _stop_reading(self) -> None:
        """From now on, input is read and dropped; no timer but the linger's closes."""
        self._in_head = True
        self._head_left = -1
        self._unset_keepalive_if_required()
        # A body past uvicorn's high-water mark pauses reading; the linger must read.
        self.flow.resume_reading()

    def _refuse(self, answer: tuple[int, bytes, bytes]) -> None:
        """Answer `answer`, shut the write side, drop input for `LINGER_S`, then close."""
        self._stop_reading()
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            # A pipelined head went wrong while an earlier answer is being written: nothing
            # may be written into the middle of it. Close once it is complete.
            cycle.keep_alive = False
            return
        self._answer_and_close(answer)

    def _answer_and_close(self, answer: tuple[int, bytes, bytes]) -> None:
        status, body, extra = answer
        request_id = b"req_%024x" % random.getrandbits(96)
        transport = self.transport
        transport.write(b"".join((
            b"HTTP/1.1 %d %s\r\n" % (status, http.HTTPStatus(status).phrase.encode()),
            b"content-type: application/json\r\n",
            b"content-length: %d\r\n" % len(body),
            b"connection: close\r\n",
            b"x-domicile-region: ", self.region_header, b"\r\n",
            b"x-domicile-provider: none\r\n",
            b"x-request-id: ", request_id, b"\r\n",
            extra,
            b"\r\n",
            body,
        )))
        self._close_lingering()

    def _close_lingering(self) -> None:
        transport = self.transport
        if transport.can_write_eof():
            transport.write_eof()
        self._linger = self.loop.call_later(min(LINGER_S, self._header_timeout),
                                            transport.close)

    def _log_busy(self) -> None:
        now = self.loop.time()
        cls = type(self)
        if now - cls._busy_logged_at >= _BUSY_LOG_EVERY_S:
            cls._busy_logged_at = now
            log.warning("region %s: connections refused: %d open (server.max_connections)",
                        self.region_header.decode(), self.limits.max_connections)


def protocol_for(region: str, limits: ServerSettings) -> type[RegionProtocol]:
    """The protocol class of `region`'s server, bound to the site's `[server]` limits."""
    too_large = HeadersTooLarge(
        f"The request line and headers are larger than {limits.max_header_bytes} bytes.")
    too_slow = HeadersTimeout(
        f"The request's headers did not arrive within {limits.header_timeout_s:g} s.")
    busy = ServerBusy(
        f"This region's server has {limits.max_connections} open connections, its limit; "
        "retry shortly.")

    class BoundRegionProtocol(RegionProtocol):
        pass

    BoundRegionProtocol.limits = limits
    BoundRegionProtocol.region_header = region.encode()
    BoundRegionProtocol._too_large = (too_large.status, too_large.body(), b"")
    BoundRegionProtocol._too_slow = (too_slow.status, too_slow.body(), b"")
    BoundRegionProtocol._busy = (busy.status, busy.body(), b"retry-after: 1\r\n")
    BoundRegionProtocol.__name__ = BoundRegionProtocol.__qualname__ = f"RegionProtocol[{region}]"
    return BoundRegionProtocol
