"""One-line causes of failures, for an operator to act on: the one describer of exceptions.

`describe(exc)` is for failures outside a request (start-up, CLI): the exception's type and,
where there is one, its errno or the driver's first line; never a traceback. A file it names
is one of the site's own (configuration), never a client's.

`describe(exc, text=False)` is for log lines, request handling included (G4): constants only
(exception types, errno, SQLite's error name, PostgreSQL's SQLSTATE), never an exception's
text, which can quote SQL parameters, paths or request content.
"""

from __future__ import annotations

import errno

from sqlalchemy.exc import DBAPIError

from domicile.errors import DomicileError

__all__ = ["cause_of", "describe"]

_MAX_CHARS = 200


def cause_of(exc: BaseException) -> BaseException:
    """The driver's own error inside a SQLAlchemy error (without its statement), else `exc`."""
    if isinstance(exc, DBAPIError) and isinstance(exc.orig, BaseException):
        return exc.orig
    return exc


def describe(exc: BaseException, *, text: bool = True) -> str:
    """With `text`: `Type: cause` on one line, e.g. `OperationalError: connection failed: …
    Connection refused` or `PermissionError: [Errno 13 EACCES] Permission denied: /srv/eu`.
    Without: `Type, driver.Type, errno 28 (ENOSPC), SQLITE_FULL, SQLSTATE 53100` (the parts
    that apply)."""
    if not text:
        return _constants(exc)
    if isinstance(exc, DomicileError):
        return _one_line(exc.message)
    inner = cause_of(exc)
    name = type(inner).__name__
    if isinstance(inner, OSError) and inner.errno is not None:
        code = errno.errorcode.get(inner.errno, "?")
        where = f": {inner.filename}" if inner.filename is not None else ""
        return f"{name}: [Errno {inner.errno} {code}] {inner.strerror or ''}{where}"
    line = _one_line(str(inner))
    return f"{name}: {line}" if line else name


def _constants(exc: BaseException) -> str:
    cause = cause_of(exc)
    names = [type(exc).__name__]
    if cause is not exc:
        names.append(f"{type(cause).__module__.split('.')[0]}.{type(cause).__name__}")
    if isinstance(cause, OSError) and cause.errno is not None:
        names.append(f"errno {cause.errno} ({errno.errorcode.get(cause.errno, '?')})")
    sqlite_name = getattr(cause, "sqlite_errorname", None)
    if isinstance(sqlite_name, str):
        names.append(sqlite_name)
    sqlstate = getattr(cause, "sqlstate", None)
    if isinstance(sqlstate, str):
        names.append(f"SQLSTATE {sqlstate}")
    return ", ".join(names)


def _one_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= _MAX_CHARS else line[: _MAX_CHARS - 1] + "…"
