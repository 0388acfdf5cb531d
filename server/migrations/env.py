"""Alembic's entry point: runs the revisions on the connection `upgrade.upgrade_database` opened and locked."""

from alembic import context

connection = context.config.attributes["connection"]
# SQLite alters most things only by copying the table: batch mode does that where it is needed.
context.configure(connection=connection, render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()
