"""shipments

Revision ID: r6
Revises: r5
"""

import sqlalchemy as sa
from alembic import op

# a new table that 1.2.x never reads: 1.2.x runs on this schema unchanged
# rollwise: expand

revision = "r6"
down_revision = "r5"


def upgrade() -> None:
    op.create_table(
        "shipments",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("order_id", sa.String(64), sa.ForeignKey("orders.id"), nullable=False),
        sa.Column("carrier", sa.String(32), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("shipments")
