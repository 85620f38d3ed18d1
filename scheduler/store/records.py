"""Typed values the queue hands out: runs as read, runs to create."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from .models import RunState

WINDOW_FIELDS = (
    "timeWindowType",
    "timeWindowStart",
    "timeWindowEnd",
    "timeWindowTimeZone",
)


def dedupe_key(job: str, request: Mapping[str, Any]) -> str:
    """A run's identity: its job, concrete time window and parameter values."""
    identity = {
        "job": job,
        "window": {key: request.get(key) for key in WINDOW_FIELDS},
        "parameters": request.get("parameterValues") or {},
    }
    canonical = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class NewRun:
    """A run to enqueue; ``request`` is the create-execution body."""

    job: str
    account_id: str
    instance_id: str
    request: Mapping[str, Any]
    max_attempts: int
    expected_seconds: float
    priority: int = 0
    source: str = "api"
    not_before: datetime | None = None

    @property
    def dedupe_key(self) -> str:
        return dedupe_key(self.job, self.request)


@dataclass(frozen=True)
class RunRecord:
    """A run as it stands in the ``runs`` table."""

    id: int
    job: str
    account_id: str
    instance_id: str
    dedupe_key: str
    source: str
    state: str
    priority: int
    expected_seconds: float
    not_before: datetime
    request: Mapping[str, Any]
    max_attempts: int
    attempt: int
    execution_id: str | None
    amc_status: str | None
    reason: str | None
    message: str | None
    lease_owner: str | None
    lease_expires_at: datetime | None
    claimed_at: datetime | None
    lookup_since: datetime | None
    cancel_requested: bool
    results_state: str | None
    created_at: datetime
    updated_at: datetime
    submitted_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None

    @classmethod
    def from_row(cls, row: Any) -> RunRecord:
        mapping = row._mapping if hasattr(row, "_mapping") else row
        return cls(**{f.name: mapping[f.name] for f in fields(cls)})

    @property
    def run_state(self) -> RunState:
        return RunState(self.state)

    @property
    def workflow_id(self) -> str | None:
        workflow_id = self.request.get("workflowId")
        if workflow_id is None and isinstance(self.request.get("workflow"), dict):
            workflow_id = self.request["workflow"].get("workflowId")

        return workflow_id if isinstance(workflow_id, str) else None

    @property
    def sql(self) -> str | None:
        workflow = self.request.get("workflow")
        if isinstance(workflow, dict) and isinstance(workflow.get("sqlQuery"), str):
            return str(workflow["sqlQuery"])

        return None

    @property
    def timeout_seconds(self) -> int:
        value = self.request.get("workflowExecutionTimeoutSeconds")
        return int(value) if isinstance(value, int | float) else 21600

    def window_fields(self) -> dict[str, Any]:
        return {key: self.request[key] for key in WINDOW_FIELDS if key in self.request}
