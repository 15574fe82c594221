"""`domicile export`, `domicile erase`, `domicile training export`: the tenant's
ownership of its data (G7, G9)."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
