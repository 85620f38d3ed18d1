"""initial tables

Revision ID: 0001
Revises:
Create Date: 2026-12-03 14:54:49.600362
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "external_executions",
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("workflow_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("in_flight", sa.Boolean(), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "last_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("execution_id", name=op.f("pk_external_executions")),
    )
    op.create_index(
        "ix_external_executions_in_flight",
        "external_executions",
        ["account_id", "instance_id"],
        unique=False,
        postgresql_where=sa.text("in_flight"),
    )
    op.create_table(
        "leases",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("owner", sa.Text(), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(
            "acquired_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "pauses",
        sa.Column("scope", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.CheckConstraint(
            "scope IN ('instance', 'account')", name=op.f("ck_pauses_scope")
        ),
        sa.PrimaryKeyConstraint("scope", "key", name=op.f("pk_pauses")),
    )
    op.create_table(
        "runs",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("account_id", sa.Text(), nullable=False),
        sa.Column("instance_id", sa.Text(), nullable=False),
        sa.Column("dedupe_key", sa.Text(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), server_default="queued", nullable=False),
        sa.Column(
            "priority", sa.Integer(), server_default=sa.text("0"), nullable=False
        ),
        sa.Column("expected_seconds", sa.Double(), nullable=False),
        sa.Column(
            "not_before",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("request", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=True),
        sa.Column("amc_status", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("lease_owner", sa.Text(), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("lookup_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "cancel_requested",
            sa.Boolean(),
            server_default=sa.text("false"),
            nullable=False,
        ),
        sa.Column("results_state", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("submitted_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "state IN ('queued', 'submitting', 'pending', 'running',"
            " 'succeeded', 'failed', 'cancelled')",
            name=op.f("ck_runs_state"),
        ),
        sa.CheckConstraint("max_attempts > 0", name=op.f("ck_runs_max_attempts")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_runs")),
    )
    op.create_index(
        "ix_runs_claim",
        "runs",
        [
            "instance_id",
            sa.literal_column("priority DESC"),
            sa.literal_column("expected_seconds DESC"),
            "id",
        ],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index("ix_runs_execution_id", "runs", ["execution_id"], unique=False)
    op.create_index(
        "ix_runs_in_flight",
        "runs",
        ["account_id", "instance_id"],
        unique=False,
        postgresql_where=sa.text("state IN ('submitting', 'pending', 'running')"),
    )
    op.create_index(
        "ix_runs_job_finished",
        "runs",
        ["job", "finished_at"],
        unique=False,
        postgresql_where=sa.text("state = 'succeeded'"),
    )
    op.create_index("ix_runs_job_id", "runs", ["job", "id"], unique=False)
    op.create_index(
        "ix_runs_queued_age",
        "runs",
        ["instance_id", "id"],
        unique=False,
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index("ix_runs_state", "runs", ["state"], unique=False)
    op.create_index(
        "uq_runs_dedupe_key_live",
        "runs",
        ["dedupe_key"],
        unique=True,
        postgresql_where=sa.text(
            "state IN ('queued', 'submitting', 'pending', 'running', 'succeeded')"
        ),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.Text(), nullable=False),
        sa.Column("hostname", sa.Text(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("version", sa.Text(), nullable=False),
        sa.Column(
            "started_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "heartbeat_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("stopped_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_table(
        "attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("execution_id", sa.Text(), nullable=False),
        sa.Column(
            "adopted", sa.Boolean(), server_default=sa.text("false"), nullable=False
        ),
        sa.Column("amc_status", sa.Text(), nullable=True),
        sa.Column("outcome", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column(
            "submitted_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("amc_create_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("amc_end_time", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_attempts_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_attempts")),
        sa.UniqueConstraint("run_id", "number", name=op.f("uq_attempts_run_id_number")),
    )
    op.create_index(
        "ix_attempts_execution_id", "attempts", ["execution_id"], unique=False
    )
    op.create_table(
        "events",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column(
            "at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("from_state", sa.Text(), nullable=True),
        sa.Column("to_state", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=True),
        sa.Column("execution_id", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("detail", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column("worker_id", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_events_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_events")),
    )
    op.create_index("ix_events_run_id_id", "events", ["run_id", "id"], unique=False)
    op.create_table(
        "job_registry",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column(
            "first_seen_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("schedule", sa.Text(), nullable=True),
        sa.Column("schedule_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("startup_run_id", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(
            ["startup_run_id"],
            ["runs.id"],
            name=op.f("fk_job_registry_startup_run_id_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("job", name=op.f("pk_job_registry")),
    )
    op.create_table(
        "result_files",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), server_default="data", nullable=False),
        sa.Column(
            "downloaded_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_result_files_run_id_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_result_files")),
    )
    op.create_index("ix_result_files_run_id", "result_files", ["run_id"], unique=False)
    op.create_table(
        "schedule_fires",
        sa.Column("job", sa.Text(), nullable=False),
        sa.Column("fire_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["runs.id"],
            name=op.f("fk_schedule_fires_run_id_runs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("job", "fire_time", name=op.f("pk_schedule_fires")),
    )


def downgrade() -> None:
    op.drop_table("schedule_fires")
    op.drop_index("ix_result_files_run_id", table_name="result_files")
    op.drop_table("result_files")
    op.drop_table("job_registry")
    op.drop_index("ix_events_run_id_id", table_name="events")
    op.drop_table("events")
    op.drop_index("ix_attempts_execution_id", table_name="attempts")
    op.drop_table("attempts")
    op.drop_table("workers")
    op.drop_index(
        "uq_runs_dedupe_key_live",
        table_name="runs",
        postgresql_where=sa.text(
            "state IN ('queued', 'submitting', 'pending', 'running', 'succeeded')"
        ),
    )
    op.drop_index("ix_runs_state", table_name="runs")
    op.drop_index(
        "ix_runs_queued_age",
        table_name="runs",
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.drop_index("ix_runs_job_id", table_name="runs")
    op.drop_index(
        "ix_runs_job_finished",
        table_name="runs",
        postgresql_where=sa.text("state = 'succeeded'"),
    )
    op.drop_index(
        "ix_runs_in_flight",
        table_name="runs",
        postgresql_where=sa.text("state IN ('submitting', 'pending', 'running')"),
    )
    op.drop_index("ix_runs_execution_id", table_name="runs")
    op.drop_index(
        "ix_runs_claim", table_name="runs", postgresql_where=sa.text("state = 'queued'")
    )
    op.drop_table("runs")
    op.drop_table("pauses")
    op.drop_table("leases")
    op.drop_index(
        "ix_external_executions_in_flight",
        table_name="external_executions",
        postgresql_where=sa.text("in_flight"),
    )
    op.drop_table("external_executions")
