"""One-line causes of operational failures (start-up, CLI), for an operator to act on.

A database that cannot be reached, a folder that cannot be opened: the exception's type and,
where there is one, its errno or the driver's first line; never a traceback. Only for
failures outside a request: request handlers log the type and request id alone (G4).
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError

from domicile.errors import DomicileError

__all__ = ["describe"]

_MAX_CHARS = 200


def describe(exc: BaseException) -> str:
    """`Type: cause` on one line, e.g. `OperationalError: connection failed: … Connection
    refused` or `PermissionError: [Errno 13 EACCES] Permission denied: /srv/eu`. A file
    named is one of the site's own (configuration), never a client's."""
    if isinstance(exc, DomicileError):
        return _one_line(exc.message)
    inner: BaseException = exc
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        inner = exc.orig  # the driver's error, without SQLAlchemy's statement and links
    name = type(inner).__name__
    if isinstance(inner, OSError) and inner.errno is not None:
        code = errno.errorcode.get(inner.errno, "?")
        where = f": {inner.filename}" if inner.filename is not None else ""
        return f"{name}: [Errno {inner.errno} {code}] {inner.strerror or ''}{where}"
    text = _one_line(str(inner))
    return f"{name}: {text}" if text else name


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 1] + "…"
