"""The database migrations a release carries (versions, checksums, markers).

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.add_column(sa.Column("schema", sa.JSON))


def downgrade() -> None:
    with op.batch_alter_table("releases") as batch:
        batch.drop_column("schema")
