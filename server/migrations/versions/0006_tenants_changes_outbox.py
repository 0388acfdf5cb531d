"""Tenants, the change sequence and the webhook outbox: predictions.owner / change_seq and an index on
completed_at, files.owner, the `counters` table (with its `change` row) and `webhook_outbox`.

Databases made by the releases that introduced these before alembic already have some or all of them: each is
added only when missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def _add_indexed_column(inspector: sa.Inspector, table: str, column: sa.Column) -> None:
    if column.name not in {c["name"] for c in inspector.get_columns(table)}:
        op.add_column(table, column)
    index = f"ix_{table}_{column.name}"
    if index not in {i["name"] for i in inspector.get_indexes(table)}:
        op.create_index(index, table, [column.name])


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    _add_indexed_column(inspector, "predictions", sa.Column("owner", sa.String(64), nullable=True))
    _add_indexed_column(inspector, "predictions", sa.Column("change_seq", sa.Integer, nullable=True))
    if "ix_predictions_completed_at" not in {i["name"] for i in inspector.get_indexes("predictions")}:
        op.create_index("ix_predictions_completed_at", "predictions", ["completed_at"])
    _add_indexed_column(inspector, "files", sa.Column("owner", sa.String(64), nullable=True))
    tables = set(inspector.get_table_names())
    if "counters" not in tables:
        op.create_table("counters", sa.Column("name", sa.String(32), primary_key=True),
                        sa.Column("value", sa.Integer, nullable=False))
    counters = sa.table("counters", sa.column("name", sa.String), sa.column("value", sa.Integer))
    if op.get_bind().execute(sa.select(counters.c.name).where(counters.c.name == "change")).first() is None:
        op.bulk_insert(counters, [{"name": "change", "value": 0}])
    if "webhook_outbox" not in tables:
        op.create_table(
            "webhook_outbox",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("prediction_id", sa.String(32), nullable=False),
            sa.Column("event", sa.String(16), nullable=False),
            sa.Column("state", sa.String(16), nullable=False),
            sa.Column("attempts", sa.Integer, nullable=False),
            sa.Column("next_at", sa.Float, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("last_error", sa.Text, nullable=True),
        )
        op.create_index("ix_webhook_outbox_prediction_id", "webhook_outbox", ["prediction_id"])
        op.create_index("ix_webhook_outbox_state", "webhook_outbox", ["state"])


def downgrade() -> None:
    op.drop_table("webhook_outbox")
    op.drop_table("counters")
    for table, column in (("files", "owner"), ("predictions", "change_seq"), ("predictions", "owner")):
        op.drop_index(f"ix_{table}_{column}", table)
        with op.batch_alter_table(table) as batch:
            batch.drop_column(column)
    op.drop_index("ix_predictions_completed_at", "predictions")
