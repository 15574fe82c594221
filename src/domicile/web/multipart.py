"""A streaming multipart/form-data reader that never touches the disk (G4).

Common multipart libraries spool large parts to temporary files; here a part's bytes are
handed on as they arrive (into the encrypted store), holding at most one boundary's worth
of bytes back. `MultipartParser` is the incremental parser (bytes in, events out);
`MultipartReader` drives it from an ASGI `receive`.
"""

from __future__ import annotations

import re
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from domicile.errors import BodyTooLarge, InvalidInput

from .asgi import ClientDisconnected, Receive

__all__ = ["MultipartParser", "MultipartReader", "PartStart", "boundary_of"]

MAX_HEADER_BYTES = 16 * 1024
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')


def boundary_of(content_type: bytes | None) -> bytes:
    """The boundary of a `multipart/form-data` content type, else a 400."""
    if content_type is None:
        raise InvalidInput("Expected a multipart/form-data body.")
    text = content_type.decode("latin-1")
    kind, _, _ = text.partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise InvalidInput("Expected a multipart/form-data body.")
    boundary = _params(text).get("boundary", "")
    if not 1 <= len(boundary) <= 70:
        raise InvalidInput("The multipart/form-data body has no valid boundary.")
    return boundary.encode("latin-1")


def _params(header_value: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, raw in _PARAM.findall(header_value):
        value = raw.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        params[key.lower()] = value
    return params


@dataclass(frozen=True, slots=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


class _PartEnd:
    __slots__ = ()


PART_END = _PartEnd()
Event = PartStart | bytes | _PartEnd

_PREAMBLE, _AFTER_DELIMITER, _HEADERS, _BODY, _DONE = range(5)


class MultipartParser:
    def __init__(self, boundary: bytes) -> None:
        self._delimiter = b"\r\n--" + boundary
        # The first delimiter has no CRLF before it: pretend it had.
        self._buffer = bytearray(b"\r\n")
        self._state = _PREAMBLE

    @property
    def done(self) -> bool:
        return self._state == _DONE

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        if self._state == _DONE:
            return events  # the epilogue is ignored
        buffer = self._buffer
        buffer += data
        delimiter = self._delimiter
        while True:
            if self._state in (_PREAMBLE, _BODY):
                at = buffer.find(delimiter)
                if at < 0:
                    # Keep what could be the start of a delimiter split across reads.
                    keep = len(delimiter) - 1
                    if len(buffer) > keep:
                        if self._state == _BODY:
                            events.append(bytes(buffer[:-keep]))
                        del buffer[:-keep]
                    return events
                if self._state == _BODY:
                    if at:
                        events.append(bytes(buffer[:at]))
                    events.append(PART_END)
                del buffer[:at + len(delimiter)]
                self._state = _AFTER_DELIMITER
            elif self._state == _AFTER_DELIMITER:
                if len(buffer) < 2:
                    return events
                if buffer[:2] == b"--":
                    self._state = _DONE
                    buffer.clear()
                    return events
                end = buffer.find(b"\r\n")
                if end < 0:
                    if len(buffer) > 256:
                        raise InvalidInput("Malformed multipart body.")
                    return events
                if buffer[:end].strip(b" \t"):  # only transport padding may follow
                    raise InvalidInput("Malformed multipart body.")
                del buffer[:end + 2]
                self._state = _HEADERS
            elif self._state == _HEADERS:
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > MAX_HEADER_BYTES:
                        raise InvalidInput("A multipart part's headers are too long.")
                    return events
                events.append(self._part_start(bytes(buffer[:end])))
                del buffer[:end + 4]
                self._state = _BODY
            else:
                return events

    @staticmethod
    def _part_start(raw: bytes) -> PartStart:
        headers: dict[str, str] = {}
        for line in raw.decode("utf-8", "replace").split("\r\n"):
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        if not disposition.lower().startswith("form-data"):
            raise InvalidInput("A multipart part has no form-data Content-Disposition.")
        params = _params(disposition)
        return PartStart(params.get("name", ""), params.get("filename"),
                         headers.get("content-type"))


class MultipartReader:
    """Parts of a multipart body read from ASGI `receive`, one at a time.

    Holds at most one received message (plus a boundary's worth) at a time; past `limit`
    bytes of body it raises `BodyTooLarge` (413); a client that leaves, `ClientDisconnected`.
    """

    def __init__(self, receive: Receive, boundary: bytes, *, limit: int) -> None:
        self._receive = receive
        self._parser = MultipartParser(boundary)
        self._events: deque[Event] = deque()
        self._limit = limit
        self._received = 0
        self._body_done = False

    async def _fill(self) -> bool:
        """Feed the parser one more piece of the body; False at its end."""
        if self._body_done:
            return False
        message = await self._receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected
        data: bytes = message.get("body", b"")
        self._received += len(data)
        if self._received > self._limit:
            raise BodyTooLarge(f"The upload is larger than {self._limit} bytes.")
        self._events.extend(self._parser.feed(data))
        if not message.get("more_body", False):
            self._body_done = True
            if not self._parser.done:
                raise InvalidInput("The multipart body ended before its closing boundary.")
        return True

    async def next_part(self) -> PartStart | None:
        """The next part's headers (skipping what is left of the current part)."""
        while True:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, PartStart):
                    return event
            if not await self._fill():
                return None

    async def chunks(self) -> AsyncIterator[bytes]:
        """The current part's bytes, as they arrive."""
        while True:
            while self._events:
                event = self._events[0]
                if isinstance(event, PartStart):
                    return
                self._events.popleft()
                if isinstance(event, _PartEnd):
                    return
                yield event
            if not await self._fill():
                return

    async def read(self, limit: int) -> bytes:
        """The current part whole (for small fields), at most `limit` bytes."""
        data = bytearray()
        async for chunk in self.chunks():
            data += chunk
            if len(data) > limit:
                raise InvalidInput(f"A form field is larger than {limit} bytes.")
        return bytes(data)
