"""predictions.log_times: the unix time of each line of `logs` the worker wrote (fal reports one per line)."""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    # A data dir adopted from before alembic may have been made with the column already: add it only when missing.
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("predictions")}
    if "log_times" not in columns:
        op.add_column("predictions", sa.Column("log_times", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("log_times")
