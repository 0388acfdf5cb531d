"""The predictions and files tables as the first release created them.

A data dir from before alembic already has them (its schema is this one, plus columns later revisions add
only when missing): then nothing is created and the database is simply adopted.
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "predictions" not in existing:
        op.create_table(
            "predictions",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("endpoint", sa.String(200), nullable=False),
            sa.Column("version", sa.String(100), nullable=False),
            sa.Column("dialect", sa.String(32), nullable=False),
            sa.Column("model", sa.String(200), nullable=False),
            sa.Column("input", sa.JSON, nullable=False),
            sa.Column("request", sa.JSON, nullable=False),
            sa.Column("status", sa.String(16), nullable=False),
            sa.Column("logs", sa.Text, nullable=False),
            sa.Column("progress", sa.Float, nullable=True),
            sa.Column("output", sa.JSON, nullable=True),
            sa.Column("error", sa.Text, nullable=True),
            sa.Column("metrics", sa.JSON, nullable=True),
            sa.Column("seed", sa.Integer, nullable=True),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("started_at", sa.Float, nullable=True),
            sa.Column("completed_at", sa.Float, nullable=True),
            sa.Column("updated_at", sa.Float, nullable=False),
            sa.Column("rev", sa.Integer, nullable=False),
            sa.Column("webhook", sa.Text, nullable=True),
            sa.Column("webhook_events", sa.JSON, nullable=True),
            sa.Column("cancel_requested", sa.Boolean, nullable=False),
            sa.Column("cancel_at", sa.Float, nullable=True),
            sa.Column("lease_owner", sa.String(100), nullable=True),
            sa.Column("lease_expires", sa.Float, nullable=True),
            sa.Column("extra", sa.JSON, nullable=True),
        )
        op.create_index("ix_predictions_id", "predictions", ["id"], unique=True)
        op.create_index("ix_predictions_status", "predictions", ["status"])
        op.create_index("ix_predictions_updated_at", "predictions", ["updated_at"])
        op.create_index("ix_predictions_lease_owner", "predictions", ["lease_owner"])
    if "files" not in existing:
        op.create_table(
            "files",
            sa.Column("seq", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("id", sa.String(32), nullable=False),
            sa.Column("name", sa.String(500), nullable=False),
            sa.Column("content_type", sa.String(200), nullable=False),
            sa.Column("size", sa.Integer, nullable=False),
            sa.Column("sha256", sa.String(64), nullable=False),
            sa.Column("md5", sa.String(32), nullable=False),
            sa.Column("metadata", sa.JSON, nullable=False),
            sa.Column("created_at", sa.Float, nullable=False),
            sa.Column("expires_at", sa.Float, nullable=True),
            sa.Column("path", sa.Text, nullable=False),
        )
        op.create_index("ix_files_id", "files", ["id"], unique=True)


def downgrade() -> None:
    op.drop_table("files")
    op.drop_table("predictions")
