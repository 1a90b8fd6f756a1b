"""payments

Revision ID: r5
Revises: r4
"""

import sqlalchemy as sa
from alembic import op

revision = "r5"
down_revision = "r4"


def upgrade() -> None:
    op.create_table(
        "payments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("amount", sa.Numeric(10, 2), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("payments")
