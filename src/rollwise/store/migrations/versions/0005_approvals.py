"""Approval requests of the two-person rule (`approvals` in an environment).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "approvals",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("env", sa.String(64), nullable=False, index=True),
        sa.Column("version", sa.String(64), nullable=False),
        sa.Column("requested_by", sa.String(128), nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=False),
        sa.Column("required", sa.Integer, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("approvers", sa.JSON, nullable=False),
        sa.Column("decided_by", sa.String(128)),
        sa.Column("reason", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("approvals")
