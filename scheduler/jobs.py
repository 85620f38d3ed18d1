"""From a job of the config to a run: the concrete window, parameters and body.

The create-execution body is fixed when the run is created, so a run
submits what it was created with even if the job changes or goes away.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from .config import JobSettings, Settings
from .store.records import NewRun
from .windows import Window, resolve, resolve_parameters


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def request_body(
    job: JobSettings, window: Window, parameters: Mapping[str, Any]
) -> dict[str, Any]:
    """The create-execution body AMC receives for ``job`` over ``window``."""
    body: dict[str, Any] = {}
    if job.workflow_id is not None:
        body["workflowId"] = job.workflow_id
    else:
        assert job.sql is not None
        # AMC takes the query on one line.
        body["workflow"] = {"sqlQuery": " ".join(job.sql.split())}

    body.update(window.amc_fields())
    if parameters:
        body["parameterValues"] = dict(parameters)

    if job.timeout is not None:
        body["workflowExecutionTimeoutSeconds"] = int(job.timeout.total_seconds())

    for key in ("ignore_data_gaps", "dry_run", "skip_publish", "output_format"):
        value = getattr(job, key)
        if value is not None:
            body[_camel(key)] = value

    body.update(job.request_fields)
    return body


def expected_seconds(
    job: JobSettings, settings: Settings, learned: Mapping[str, float] | None = None
) -> float:
    """How long a run of ``job`` should hold its slot: history, else the config."""
    if learned and job.name in learned:
        return learned[job.name]

    default = job.expected_duration or settings.dispatcher.expected_duration
    return default.total_seconds()


def build_run(
    settings: Settings,
    job: JobSettings,
    at: datetime,
    *,
    source: str,
    window: Window | None = None,
    parameters: Mapping[str, Any] | None = None,
    learned: Mapping[str, float] | None = None,
    priority: int | None = None,
) -> NewRun:
    """A run of ``job`` as of ``at``: its rule's window unless one is given."""
    account = settings.account_of(job.instance)
    window = window or resolve(job.time_window, at)
    values = resolve_parameters(
        {**job.parameters, **(parameters or {})}, at, job.time_zone
    )
    return NewRun(
        job=job.name,
        account_id=account.id,
        instance_id=job.instance,
        request=request_body(job, window, values),
        max_attempts=job.max_attempts,
        expected_seconds=expected_seconds(job, settings, learned),
        priority=job.priority if priority is None else priority,
        source=source,
    )
