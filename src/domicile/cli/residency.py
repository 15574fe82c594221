"""`domicile residency ...`: the residency report and verification (G1, G2, G5)."""

from __future__ import annotations

import typer

__all__ = ["register"]


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
