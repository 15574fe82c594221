"""Alembic environment: runs on the connection `domicile.storage.db.migrate` hands over."""

from alembic import context

config = context.config
connection = config.attributes["connection"]
context.configure(
    connection=connection,
    version_table=config.get_main_option("version_table"),
    transaction_per_migration=False,
)
with context.begin_transaction():
    context.run_migrations()
