"""predictions.idempotency_key ("<tenant>:<client key>"), unique, so a repeated create finds the first.

Databases made by the release that introduced it before alembic already have it: added only when missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    inspector = sa.inspect(op.get_bind())
    if "idempotency_key" not in {c["name"] for c in inspector.get_columns("predictions")}:
        op.add_column("predictions", sa.Column("idempotency_key", sa.String(300), nullable=True))
    if "ix_predictions_idempotency_key" not in {i["name"] for i in inspector.get_indexes("predictions")}:
        op.create_index("ix_predictions_idempotency_key", "predictions", ["idempotency_key"], unique=True)


def downgrade() -> None:
    op.drop_index("ix_predictions_idempotency_key", "predictions")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("idempotency_key")
