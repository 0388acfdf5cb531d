"""The store's schema history (alembic), applied to SQLite and PostgreSQL alike by `upgrade.upgrade_database`.

A schema change is a new file in versions/ whose `down_revision` is the current head; the tables in
server/store.py describe the newest schema, and tests/test_store.py checks that both agree.
"""
