"""The Alembic environment both schemas share: run on the connection `migrate` hands over."""

from __future__ import annotations

from alembic import context


def run_migrations() -> None:
    config = context.config
    context.configure(
        connection=config.attributes["connection"],
        version_table=config.get_main_option("version_table"),
        transaction_per_migration=False,
    )
    with context.begin_transaction():
        context.run_migrations()
