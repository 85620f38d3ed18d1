"""Tables. Postgres is the only state; everything here is derived from rows.

``runs`` is the queue and the record of each run; ``attempts`` holds one row
per AMC execution a run owned; ``events`` is the history of every state
change. The other tables let any number of replicas share one database:
``leases`` (who polls an instance), ``pauses`` (an instance or account backing
off after a limit error), ``external_executions`` (slots taken by executions
started outside the scheduler), ``schedule_fires`` and ``job_registry`` (each
occurrence enqueued once), ``workers`` (one row per process start).
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class RunState(enum.StrEnum):
    QUEUED = "queued"
    SUBMITTING = "submitting"
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL_STATES

    @property
    def holds_slot(self) -> bool:
        return self in SLOT_STATES


TERMINAL_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})
SLOT_STATES = frozenset({RunState.SUBMITTING, RunState.PENDING, RunState.RUNNING})
# A run in one of these states blocks a new run with the same dedupe key.
LIVE_STATES = frozenset(
    {
        RunState.QUEUED,
        RunState.SUBMITTING,
        RunState.PENDING,
        RunState.RUNNING,
        RunState.SUCCEEDED,
    }
)


def _in(states: frozenset[RunState] | tuple[RunState, ...]) -> str:
    order = list(RunState)
    names = ", ".join(f"'{s.value}'" for s in sorted(states, key=order.index))
    return f"state IN ({names})"


NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

_NOW = text("now()")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {
        datetime: DateTime(timezone=True),
        dict[str, Any]: JSONB,
        str: Text,
        int: Integer,
        float: Double,
    }


class Run(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job: Mapped[str]
    account_id: Mapped[str]
    instance_id: Mapped[str]
    dedupe_key: Mapped[str]
    source: Mapped[str]
    state: Mapped[str] = mapped_column(server_default=RunState.QUEUED.value)
    priority: Mapped[int] = mapped_column(server_default=text("0"))
    expected_seconds: Mapped[float]
    not_before: Mapped[datetime] = mapped_column(server_default=_NOW)
    # The create-execution body: workflow, window, parameters, options.
    request: Mapped[dict[str, Any]]
    max_attempts: Mapped[int]
    # Number of the attempt that owns execution_id (0 before the first).
    attempt: Mapped[int] = mapped_column(server_default=text("0"))
    execution_id: Mapped[str | None]
    amc_status: Mapped[str | None]
    reason: Mapped[str | None]
    message: Mapped[str | None]
    lease_owner: Mapped[str | None]
    lease_expires_at: Mapped[datetime | None]
    # When the current `submitting` lease began: a create may have reached AMC
    # at any moment after it.
    claimed_at: Mapped[datetime | None]
    # Set after a create call ended ambiguously (or its process died): before
    # creating again, look for an execution created since then and adopt it.
    lookup_since: Mapped[datetime | None]
    cancel_requested: Mapped[bool] = mapped_column(
        Boolean, server_default=text("false")
    )
    results_state: Mapped[str | None]
    created_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    updated_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    submitted_at: Mapped[datetime | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]

    __table_args__ = (
        CheckConstraint(_in(tuple(RunState)), name="state"),
        CheckConstraint("max_attempts > 0", name="max_attempts"),
        Index(
            "uq_runs_dedupe_key_live",
            "dedupe_key",
            unique=True,
            postgresql_where=text(_in(LIVE_STATES)),
        ),
        # The claim: per instance, by priority, then longest expected first.
        Index(
            "ix_runs_claim",
            "instance_id",
            text("priority DESC"),
            text("expected_seconds DESC"),
            "id",
            postgresql_where=text("state = 'queued'"),
        ),
        # Aging: the oldest queued runs of each instance, and none read when
        # none is old enough (a range on created_at, not a filter).
        Index(
            "ix_runs_queued_age",
            "instance_id",
            "created_at",
            "id",
            postgresql_where=text("state = 'queued'"),
        ),
        Index(
            "ix_runs_in_flight",
            "account_id",
            "instance_id",
            postgresql_where=text(_in(SLOT_STATES)),
        ),
        Index(
            "ix_runs_job_finished",
            "job",
            "finished_at",
            postgresql_where=text("state = 'succeeded'"),
        ),
        Index("ix_runs_job_id", "job", "id"),
        Index("ix_runs_state", "state"),
        Index("ix_runs_execution_id", "execution_id"),
    )


class Attempt(Base):
    __tablename__ = "attempts"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.id", ondelete="CASCADE")
    )
    number: Mapped[int]
    execution_id: Mapped[str]
    adopted: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    amc_status: Mapped[str | None]
    outcome: Mapped[str | None]
    reason: Mapped[str | None]
    submitted_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    # AMC's own clock: createTime, and lastUpdatedTime once terminal. Their
    # difference is how long the execution held its slot.
    amc_create_time: Mapped[datetime | None]
    amc_end_time: Mapped[datetime | None]

    __table_args__ = (
        UniqueConstraint("run_id", "number"),
        # An execution is one attempt's, never two.
        Index("ix_attempts_execution_id", "execution_id", unique=True),
    )


class Event(Base):
    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.id", ondelete="CASCADE")
    )
    at: Mapped[datetime] = mapped_column(server_default=_NOW)
    from_state: Mapped[str | None]
    to_state: Mapped[str]
    reason: Mapped[str]
    attempt: Mapped[int | None]
    execution_id: Mapped[str | None]
    message: Mapped[str | None]
    detail: Mapped[dict[str, Any] | None]
    worker_id: Mapped[str | None]

    __table_args__ = (Index("ix_events_run_id_id", "run_id", "id"),)


class ResultFile(Base):
    __tablename__ = "result_files"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("runs.id", ondelete="CASCADE")
    )
    attempt: Mapped[int]
    name: Mapped[str]
    path: Mapped[str]
    bytes: Mapped[int] = mapped_column(BigInteger)
    kind: Mapped[str] = mapped_column(server_default="data")
    downloaded_at: Mapped[datetime] = mapped_column(server_default=_NOW)

    __table_args__ = (Index("ix_result_files_run_id", "run_id"),)


class ScheduleFire(Base):
    """One row per (job, fire time): inserted before the run, so it fires once."""

    __tablename__ = "schedule_fires"

    job: Mapped[str] = mapped_column(primary_key=True)
    fire_time: Mapped[datetime] = mapped_column(primary_key=True)
    run_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("runs.id", ondelete="SET NULL")
    )
    created_at: Mapped[datetime] = mapped_column(server_default=_NOW)


class JobRecord(Base):
    """What the database knows of each configured job, by name.

    ``startup_run_id``: an unscheduled job is enqueued at start-up once, ever.
    ``schedule``/``schedule_since``: the cron expression last seen and since
    when, so that catching up missed fires never reaches back before it.
    """

    __tablename__ = "job_registry"

    job: Mapped[str] = mapped_column(primary_key=True)
    first_seen_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    schedule: Mapped[str | None]
    schedule_since: Mapped[datetime | None]
    startup_run_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("runs.id", ondelete="SET NULL")
    )


class ExternalExecution(Base):
    """An execution at AMC that no run owns; it takes a slot while in flight."""

    __tablename__ = "external_executions"

    execution_id: Mapped[str] = mapped_column(primary_key=True)
    account_id: Mapped[str]
    instance_id: Mapped[str]
    workflow_id: Mapped[str | None]
    status: Mapped[str]
    in_flight: Mapped[bool] = mapped_column(Boolean)
    create_time: Mapped[datetime | None]
    first_seen_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    last_seen_at: Mapped[datetime] = mapped_column(server_default=_NOW)

    __table_args__ = (
        Index(
            "ix_external_executions_in_flight",
            "account_id",
            "instance_id",
            postgresql_where=text("in_flight"),
        ),
    )


class Lease(Base):
    """A named role held by one process until it expires (e.g. polling one instance)."""

    __tablename__ = "leases"

    name: Mapped[str] = mapped_column(primary_key=True)
    owner: Mapped[str]
    expires_at: Mapped[datetime]
    acquired_at: Mapped[datetime] = mapped_column(server_default=_NOW)


class Pause(Base):
    """Admission skips an instance or account until ``until`` (after a limit error)."""

    __tablename__ = "pauses"

    scope: Mapped[str] = mapped_column(primary_key=True)
    key: Mapped[str] = mapped_column(primary_key=True)
    until: Mapped[datetime]
    reason: Mapped[str]

    __table_args__ = (
        CheckConstraint("scope IN ('instance', 'account')", name="scope"),
    )


class Worker(Base):
    """One row per process start; a fresh id each time."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(primary_key=True)
    hostname: Mapped[str]
    pid: Mapped[int]
    version: Mapped[str]
    started_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    heartbeat_at: Mapped[datetime] = mapped_column(server_default=_NOW)
    stopped_at: Mapped[datetime | None]


metadata = Base.metadata
runs = cast(Table, Run.__table__)
attempts = cast(Table, Attempt.__table__)
events = cast(Table, Event.__table__)
result_files = cast(Table, ResultFile.__table__)
schedule_fires = cast(Table, ScheduleFire.__table__)
job_registry = cast(Table, JobRecord.__table__)
external_executions = cast(Table, ExternalExecution.__table__)
leases = cast(Table, Lease.__table__)
pauses = cast(Table, Pause.__table__)
workers = cast(Table, Worker.__table__)
