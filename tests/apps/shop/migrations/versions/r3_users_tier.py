"""users.tier

Revision ID: r3
Revises: r2
"""

import sqlalchemy as sa
from alembic import op

revision = "r3"
down_revision = "r2"


def upgrade() -> None:
    op.add_column("users", sa.Column("tier", sa.String(16), nullable=True))


def downgrade() -> None:
    op.drop_column("users", "tier")
