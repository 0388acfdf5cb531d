"""predictions.preview: the latest live preview while a prediction denoises ({step, total, image, width, height}).

A database made by the release that added it before this migration existed already has it: added only when missing.
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    columns = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("predictions")}
    if "preview" not in columns:
        op.add_column("predictions", sa.Column("preview", sa.JSON, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("preview")
