"""messages: tool_calls (an assistant turn's tool calls, JSON) and tool_call_id (the call a tool turn answers)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 09:30:00.000000

Written against 0001; re-chained onto 0002 (stored responses) at the merge.
"""

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.add_column(sa.Column("tool_calls", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("tool_call_id", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("messages", schema=None) as batch_op:
        batch_op.drop_column("tool_call_id")
        batch_op.drop_column("tool_calls")
