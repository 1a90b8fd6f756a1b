"""Initial schema: releases, marks, environments, deployments, journal, locks, events.

Revision ID: 0001
Revises:
"""

from alembic import op

from rollwise.store.tables import metadata

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    metadata.create_all(op.get_bind())


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
