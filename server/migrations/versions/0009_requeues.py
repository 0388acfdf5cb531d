"""predictions.requeues: how many times a lost worker's job went back to the queue (Store.lose_held allows one)."""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"


def upgrade() -> None:
    # A database marked with an older revision may have the column already: add it only when missing.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("predictions")}
    if "requeues" not in columns:
        op.add_column("predictions", sa.Column("requeues", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("requeues")
