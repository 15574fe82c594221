"""Alembic environment of the directory schema."""

from domicile.storage.migrations.environment import run_migrations

run_migrations()
