"""Building runs for store tests."""

from __future__ import annotations

from itertools import count
from typing import Any

from scheduler.store.records import NewRun

_sequence = count(1)


def new_run(
    instance_id: str = "amc1",
    account_id: str = "ACC1",
    job: str = "job",
    *,
    priority: int = 0,
    expected_seconds: float = 1200.0,
    max_attempts: int = 3,
    window: str | None = None,
    **request: Any,
) -> NewRun:
    """A run with a unique window unless ``window`` pins one."""
    day = window or f"2026-01-01T00:00:{next(_sequence) % 60:02d}.{next(_sequence)}"
    body = {
        "workflowId": f"wf-{job}",
        "timeWindowType": "EXPLICIT",
        "timeWindowStart": day,
        "timeWindowEnd": "2027-01-01T00:00:00",
        "timeWindowTimeZone": "UTC",
        **request,
    }
    return NewRun(
        job=job,
        account_id=account_id,
        instance_id=instance_id,
        request=body,
        max_attempts=max_attempts,
        expected_seconds=expected_seconds,
        priority=priority,
    )
