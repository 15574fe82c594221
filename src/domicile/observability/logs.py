"""The server's log lines: text for people (the default) or one JSON object per line.

Both formats hold what a call to a `domicile` logger put in its message, plus the context
fields named in `CONTEXT_FIELDS` when the call passed them with `extra=` (request id, route
template, region). An exception attached to a record (`log.exception`) is written as its type
names only, never its message or traceback: either may quote request content (G4).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Literal, TextIO

__all__ = ["CONTEXT_FIELDS", "JsonFormatter", "TextFormatter", "configure_logging"]

# Attributes a log call may add with `extra=`: ids and labels only, never content.
CONTEXT_FIELDS = ("request_id", "route", "region", "provider", "status", "reason")
# The loggers whose lines `domicile serve` formats: ours and the HTTP server's.
SERVER_LOGGERS = ("domicile", "uvicorn")


def _exception_types(record: logging.LogRecord) -> str | None:
    """`ValueError <- OSError`: the types of the record's exception and its causes."""
    if not record.exc_info or record.exc_info[1] is None:
        return None
    names: list[str] = []
    seen: set[int] = set()
    exc: BaseException | None = record.exc_info[1]
    while exc is not None and id(exc) not in seen and len(names) < 8:
        seen.add(id(exc))
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return " <- ".join(names)


def _context(record: logging.LogRecord) -> dict[str, object]:
    found: dict[str, object] = {}
    for name in CONTEXT_FIELDS:
        value = record.__dict__.get(name)
        if value is not None:
            found[name] = value
    return found


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, context."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(
                timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update(_context(record))
        error = _exception_types(record)
        if error is not None:
            line["error_type"] = error
        return json.dumps(line, ensure_ascii=True, default=str)


class TextFormatter(logging.Formatter):
    """`2026-12-02T13:20:56.123Z WARNING domicile.gateway: message [request_id=…]`."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        text = (f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: "
                f"{record.getMessage()}")
        context = _context(record)
        if context:
            text += " [" + " ".join(f"{k}={v}" for k, v in context.items()) + "]"
        error = _exception_types(record)
        if error is not None:
            text += f" (error: {error})"
        return text


def configure_logging(log_format: Literal["text", "json"], level: str = "warning",
                      stream: TextIO | None = None) -> logging.Handler:
    """Send the `domicile` and `uvicorn` loggers' lines, at `level` and above, to `stream`
    (stderr) in `log_format`. Returns the handler (tests remove it again)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        numeric = logging.WARNING
    handler._domicile = True  # type: ignore[attr-defined]
    # `uvicorn.error` propagates to `uvicorn`; its access log is off (`access_log=False`:
    # its lines would quote paths and query strings, client text).
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        for old in [h for h in logger.handlers if getattr(h, "_domicile", False)]:
            logger.removeHandler(old)
        logger.addHandler(handler)
        logger.propagate = False
        logger.setLevel(numeric)
    # A uvicorn started earlier in this process (with a log level of its own) leaves
    # `uvicorn.error` at that level: take it back to its parent's.
    error_log = logging.getLogger("uvicorn.error")
    error_log.setLevel(logging.NOTSET)
    error_log.propagate = True
    return handler
