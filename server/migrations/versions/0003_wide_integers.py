"""predictions.seed and files.size become 64-bit: seeds go up to 2**32 - 1, past PostgreSQL's INTEGER.

(SQLite stores any integer in 64 bits already; the tables are rebuilt there only so both schemas read alike.)
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("seed", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=True)
    with op.batch_alter_table("files") as batch:
        batch.alter_column("size", type_=sa.BigInteger, existing_type=sa.Integer, existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.alter_column("seed", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=True)
    with op.batch_alter_table("files") as batch:
        batch.alter_column("size", type_=sa.Integer, existing_type=sa.BigInteger, existing_nullable=False)
