"""The server's log formats: one JSON object per line (or text), context fields passed with
`extra=`, and an exception written as its type names only: never its message, which may
quote request content (G4)."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from domicile.observability.logs import configure_logging

SECRET = "CANARY-in-an-exception-message-7f3a"


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, list[logging.Handler]]]:
    stream = io.StringIO()
    handlers: list[logging.Handler] = []
    yield stream, handlers
    for name in ("domicile", "uvicorn"):
        logger = logging.getLogger(name)
        for handler in handlers:
            logger.removeHandler(handler)
        logger.propagate = True
        logger.setLevel(logging.NOTSET)


def _fail() -> None:
    try:
        raise OSError(f"disk said {SECRET}")
    except OSError as exc:
        raise ValueError(f"could not parse {SECRET}") from exc


def test_json_lines_carry_context_and_exception_types_only(
        captured: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, handlers = captured
    handlers.append(configure_logging("json", "info", stream))
    log = logging.getLogger("domicile.gateway")
    log.error("unhandled %s in request %s", "ValueError", "req_1",
              extra={"request_id": "req_1", "route": "/v1/files/{file_id}", "region": "eu"})
    try:
        _fail()
    except ValueError:
        log.exception("rendering failed")
    logging.getLogger("uvicorn.error").info("Started server process [%d]", 42)
    logging.getLogger("domicile.gateway").debug("below the level: not written")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    first, second, third = lines
    assert set(first) == {"time", "level", "logger", "message", "request_id", "route",
                          "region"}
    assert first["level"] == "ERROR" and first["logger"] == "domicile.gateway"
    assert first["route"] == "/v1/files/{file_id}" and first["region"] == "eu"
    assert first["time"].endswith("+00:00")
    assert second["error_type"] == "ValueError <- OSError"
    assert third["logger"] == "uvicorn.error" and third["level"] == "INFO"
    assert SECRET not in stream.getvalue()


def test_text_is_the_default_and_keeps_exceptions_to_their_types(
        captured: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, handlers = captured
    handlers.append(configure_logging("text", "warning", stream))
    log = logging.getLogger("domicile.workspace")
    try:
        _fail()
    except ValueError:
        log.exception("markdown rendering failed", extra={"request_id": "req_2"})
    log.info("below the level")
    text = stream.getvalue()
    assert text.count("\n") == 1
    assert "WARNING" not in text and " ERROR domicile.workspace: markdown rendering failed" in text
    assert "[request_id=req_2]" in text and "(error: ValueError <- OSError)" in text
    assert SECRET not in text and "Traceback" not in text


def test_configuring_twice_keeps_one_handler(
        captured: tuple[io.StringIO, list[logging.Handler]]) -> None:
    stream, handlers = captured
    handlers.append(configure_logging("json", "info", stream))
    handlers.append(configure_logging("json", "info", stream))
    logging.getLogger("domicile").warning("once")
    assert len(stream.getvalue().splitlines()) == 1
