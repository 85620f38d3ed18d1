"""one attempt per execution

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 18:05:00.000000

An AMC execution belongs to one attempt of one run. The index on
attempts.execution_id becomes unique, so that a create's answer arriving after
the run's own lookup adopted the execution cannot record it a second time,
whatever the code above the database does.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_attempts_execution_id", table_name="attempts")
    op.create_index(
        "ix_attempts_execution_id", "attempts", ["execution_id"], unique=True
    )


def downgrade() -> None:
    op.drop_index("ix_attempts_execution_id", table_name="attempts")
    op.create_index(
        "ix_attempts_execution_id", "attempts", ["execution_id"], unique=False
    )
