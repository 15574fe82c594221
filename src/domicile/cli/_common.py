"""What every `domicile` command shares: the `--config`/`--json` options, one place that maps
errors to stderr and exit codes (2 bad input, 1 failure), and the output helpers."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from domicile.config import find_config, load_settings
from domicile.errors import DomicileError
from domicile.site import Site

__all__ = ["ConfigOption", "Failure", "JsonOption", "command", "emit", "open_site",
           "record_table", "stderr", "stdout"]

P = ParamSpec("P")
R = TypeVar("R")

ConfigOption = Annotated[Path | None, typer.Option(
    "--config", help="domicile.toml (else $DOMICILE_CONFIG, ./domicile.toml, "
                     "./.domicile/domicile.toml)")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON object on stdout.")]

stdout = Console()
stderr = Console(stderr=True)


class Failure(Exception):
    """A command that ran and found a problem (exit 1), with its JSON payload."""

    def __init__(self, message: str, payload: Mapping[str, Any]) -> None:
        super().__init__(message)
        self.payload = payload


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def emit(as_json: bool, payload: Mapping[str, Any], table: Table | str | None = None) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, default=_jsonable) + "\n")
    elif table is not None:
        stdout.print(table)
    else:
        stdout.print(record_table(payload))


def record_table(payload: Mapping[str, Any], title: str | None = None) -> Table:
    table = Table(show_header=False, title=title, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in payload.items():
        table.add_row(key, "" if value is None else str(value))
    return table


def command(func: Callable[P, R]) -> Callable[P, R]:
    """Map Domicile's errors to stderr and exit codes (2 bad input, 1 failure)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        as_json = bool(kwargs.get("as_json"))
        try:
            return func(*args, **kwargs)
        except DomicileError as exc:
            _report(as_json, {"error": {"code": exc.code, "message": exc.message,
                                        "param": exc.param}}, exc.message)
            raise typer.Exit(exc.exit_code) from None
        except Failure as exc:
            if as_json:
                sys.stdout.write(json.dumps(exc.payload, default=_jsonable) + "\n")
            stderr.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False,
                         soft_wrap=True)
            raise typer.Exit(1) from None

    return wrapper


def _report(as_json: bool, payload: Mapping[str, Any], message: str) -> None:
    if as_json:
        sys.stderr.write(json.dumps(payload) + "\n")
    else:
        stderr.print(f"[red]error:[/red] {escape(message)}", highlight=False, markup=True,
                     soft_wrap=True)


def open_site(config: Path | None) -> Site:
    return Site(load_settings(find_config(config)))
