"""aging index on created_at

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 15:49:40.729213

Admission's aging query asks each instance for its queued runs created before
a threshold, oldest first. On (instance_id, id) that was a filter: with no run
old enough it read every queued run of the instance. On (instance_id,
created_at, id) it is a range of the index, empty when none is old enough.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_index("ix_runs_queued_age", table_name="runs")
    op.create_index(
        "ix_runs_queued_age",
        "runs",
        ["instance_id", "created_at", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_runs_queued_age", table_name="runs")
    op.create_index(
        "ix_runs_queued_age",
        "runs",
        ["instance_id", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
    )
