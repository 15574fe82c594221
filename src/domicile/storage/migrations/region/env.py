"""Alembic environment of the region schema."""

from domicile.storage.migrations.environment import run_migrations

run_migrations()
