"""predictions.data_removed_at: when retention removed a prediction's outputs.

Pre-alembic databases got this column from the release that added retention, so it is added only when missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("predictions")}
    if "data_removed_at" not in columns:
        op.add_column("predictions", sa.Column("data_removed_at", sa.Float, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("data_removed_at")
