"""Requests to a running deployment (promote, abort, rollback), and who made them.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.add_column(sa.Column("request", sa.String(16)))
        batch.add_column(sa.Column("request_by", sa.String(128)))


def downgrade() -> None:
    with op.batch_alter_table("deployments") as batch:
        batch.drop_column("request_by")
        batch.drop_column("request")
