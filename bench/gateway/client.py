"""Sequential (or lightly concurrent) HTTP/1.1 keep-alive client for latency and TTFC.

Raw asyncio streams on uvloop, one pre-encoded request, minimal response parsing
(Content-Length or chunked transfer encoding), so that the client's own cost is small
and the same for every contender.

- ``--mode plain``: per-request latency = send -> last byte of the response body.
- ``--mode stream``: ``"stream": true``; TTFC = send -> first received bytes that hold an
  SSE ``data:`` line; also the total time to ``data: [DONE]``.
- ``--mode responses-stream``: a streamed ``/v1/responses`` request (``--url`` names that
  path); time to first event = send -> first received bytes holding an SSE ``data:`` line
  (``response.created``), total time to ``response.completed``.

Prints one JSON object on stdout. Every loop is bounded by ``--requests`` and by
``--deadline`` seconds for the whole run; only the given 127.0.0.1 URL is contacted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from urllib.parse import urlsplit

import uvloop

BODY_PLAIN = b'{"model":"bench-model","messages":[{"role":"user","content":"hello"}]}'
BODY_STREAM = (
    b'{"model":"bench-model","messages":[{"role":"user","content":"hello"}],"stream":true}'
)
BODY_RESPONSES = b'{"model":"bench-model","input":"hello","stream":true}'
# What ends a stream, by mode.
STREAM_END = {"stream": b"data: [DONE]", "responses-stream": b'"type":"response.completed"'}


class BadResponse(Exception):
    pass


def percentile(sorted_values: list[float], pct: float) -> float:
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), math.ceil(pct / 100.0 * len(sorted_values))))
    return sorted_values[rank - 1]


def summarize(values_ns: list[int]) -> dict[str, float]:
    ms = sorted(v / 1e6 for v in values_ns)
    if not ms:
        return {"n": 0}
    return {
        "n": len(ms),
        "min_ms": ms[0],
        "p50_ms": percentile(ms, 50),
        "p90_ms": percentile(ms, 90),
        "p99_ms": percentile(ms, 99),
        "max_ms": ms[-1],
        "mean_ms": sum(ms) / len(ms),
    }


class Conn:
    def __init__(self, host: str, port: int, request: bytes, end: bytes | None) -> None:
        self.host = host
        self.port = port
        self.request = request
        self.end = end  # what ends the stream; None for a plain request
        self.stream = end is not None
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def one(self) -> tuple[int, int]:
        """Send the request, read the response. Returns (t_first_data_ns, t_end_ns) as
        offsets from the send; for plain requests both are the end."""
        if self.writer is None:
            await self.connect()
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        t0 = time.perf_counter_ns()
        writer.write(self.request)
        head = await reader.readuntil(b"\r\n\r\n")
        t_first = 0
        status_line, _, rest = head.partition(b"\r\n")
        parts = status_line.split(b" ", 2)
        if len(parts) < 2 or parts[1] != b"200":
            raise BadResponse(status_line.decode("latin-1", "replace"))
        headers: dict[bytes, bytes] = {}
        for line in rest.split(b"\r\n"):
            if line:
                k, _, v = line.partition(b":")
                headers[k.strip().lower()] = v.strip().lower()
        close_after = headers.get(b"connection") == b"close"
        if headers.get(b"transfer-encoding") == b"chunked":
            data = bytearray()
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";", 1)[0], 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    break
                piece = await reader.readexactly(size + 2)
                data += piece[:-2]
                if not t_first and b"data:" in data:
                    t_first = time.perf_counter_ns() - t0
            body = bytes(data)
        elif b"content-length" in headers:
            body = await reader.readexactly(int(headers[b"content-length"]))
            if not t_first and b"data:" in body:
                t_first = time.perf_counter_ns() - t0
        else:  # read to EOF (HTTP/1.0 style)
            body = await reader.read()
            close_after = True
        t_end = time.perf_counter_ns() - t0
        if close_after:
            self.close()
        if self.stream:
            assert self.end is not None
            if self.end not in body or not t_first:
                raise BadResponse("stream without data/its end: " + body[:200].decode("latin-1"))
        else:
            t_first = t_end
            if b'"choices"' not in body:
                raise BadResponse("no choices: " + body[:200].decode("latin-1"))
        return t_first, t_end


async def worker(
    conn: Conn, count: int, firsts: list[int], ends: list[int], errors: list[str]
) -> None:
    for _ in range(count):
        try:
            t_first, t_end = await conn.one()
        except (
            BadResponse,
            OSError,
            asyncio.IncompleteReadError,
            ValueError,
            asyncio.LimitOverrunError,
        ) as exc:
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
            conn.close()
            continue
        firsts.append(t_first)
        ends.append(t_end)


async def run(args: argparse.Namespace) -> dict[str, object]:
    u = urlsplit(args.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise SystemExit("refusing a non-loopback target: " + host)
    path = u.path or "/v1/chat/completions"
    stream = args.mode in STREAM_END
    body = {"plain": BODY_PLAIN, "stream": BODY_STREAM, "responses-stream": BODY_RESPONSES}[
        args.mode]
    request = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
        f"Authorization: Bearer {args.key}\r\nContent-Type: application/json\r\n"
        f"Accept: {'text/event-stream' if stream else 'application/json'}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    conns = [Conn(host, port, request, STREAM_END.get(args.mode))
             for _ in range(args.concurrency)]
    result: dict[str, object] = {
        "url": args.url,
        "mode": args.mode,
        "concurrency": args.concurrency,
    }
    async with asyncio.timeout(args.deadline):
        # warm-up (discarded)
        wf: list[int] = []
        we: list[int] = []
        werr: list[str] = []
        per = max(1, args.warmup // args.concurrency)
        await asyncio.gather(*(worker(c, per, wf, we, werr) for c in conns))
        firsts: list[int] = []
        ends: list[int] = []
        errors: list[str] = []
        per = max(1, args.requests // args.concurrency)
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(c, per, firsts, ends, errors) for c in conns))
        wall = time.perf_counter() - t0
    for c in conns:
        c.close()
    result["warmup_errors"] = len(werr)
    result["errors"] = len(errors)
    result["error_samples"] = errors[:3] + werr[:2]
    result["wall_s"] = wall
    result["rps"] = len(ends) / wall if wall > 0 else 0.0
    result["latency"] = summarize(ends)
    if stream:
        result["ttfc"] = summarize(firsts)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--url", required=True, help="http://127.0.0.1:PORT/v1/chat/completions")
    p.add_argument("--key", default="bench")
    p.add_argument("--mode", choices=("plain", "stream", "responses-stream"), default="plain")
    p.add_argument("--requests", type=int, default=3000)
    p.add_argument("--warmup", type=int, default=300)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--deadline", type=float, default=300.0, help="seconds for the whole run")
    args = p.parse_args()
    try:
        out = uvloop.run(run(args))
    except TimeoutError:
        print(json.dumps({"url": args.url, "mode": args.mode, "fatal": "deadline exceeded"}))
        sys.exit(1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
