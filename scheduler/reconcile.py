"""Is this AMC execution the one a run submitted?

AMC has no idempotency key on create. After an ambiguous create (timeout,
reset, 5xx) or a crash mid-create, the run is matched against the
executions AMC lists: same workflow, created after the create began, same
window and parameter values. Where AMC's answer lacks a field the match is
tolerant of it rather than guessing; ad hoc SQL is compared when AMC shows
it (``includeWorkflow``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from .amc.client import Execution
from .store.records import RunRecord
from .windows import Window

# AMC's clock and ours may disagree by a little.
CLOCK_SKEW = timedelta(minutes=2)


def normalise_sql(text: str) -> str:
    return " ".join(text.split())


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def _loose(value: Any) -> Any:
    """Values as AMC may echo them: numbers and booleans possibly as strings."""
    if isinstance(value, dict):
        return {str(k): _loose(v) for k, v in value.items()}

    if isinstance(value, list):
        return [_loose(v) for v in value]

    if isinstance(value, bool):
        return str(value).lower()

    return str(value)


def parameters_match(request: Mapping[str, Any], execution: Execution) -> bool:
    ours = request.get("parameterValues") or {}
    theirs = dict(execution.parameter_values)
    if not theirs and "parameterValues" not in execution.raw:
        return True

    return _canonical(ours) == _canonical(theirs) or _loose(ours) == _loose(theirs)


def window_matches(request: Mapping[str, Any], execution: Execution) -> bool:
    kind = request.get("timeWindowType", "MOST_RECENT_DAY")
    if execution.time_window_type and execution.time_window_type != kind:
        return False

    if kind != "EXPLICIT":
        return True

    window = Window.from_amc_fields(request)
    if execution.window_start_original and execution.window_end_original:
        original = (execution.window_start_original, execution.window_end_original)
        if original != (request.get("timeWindowStart"), request.get("timeWindowEnd")):
            return False

        if execution.time_zone_original is not None:
            zone = request.get("timeWindowTimeZone") or "UTC"
            return execution.time_zone_original == zone

        # The same local bounds without a zone: the UTC bounds, if shown, decide.

    bounds = window.utc_bounds()
    if bounds is None or execution.window_start is None or execution.window_end is None:
        return True

    return (execution.window_start, execution.window_end) == bounds


def workflow_matches(run: RunRecord, execution: Execution) -> bool:
    """Saved workflows by id; ad hoc SQL by text when AMC shows it."""
    if run.workflow_id is not None and run.sql is None:
        return execution.workflow_id == run.workflow_id

    if run.workflow_id is not None and execution.workflow_id not in (
        None,
        run.workflow_id,
    ):
        return False

    if execution.sql is not None and run.sql is not None:
        return normalise_sql(execution.sql) == normalise_sql(run.sql)

    return True


def needs_sql(run: RunRecord, execution: Execution) -> bool:
    """An ad hoc run matched on everything but SQL AMC did not show."""
    return run.sql is not None and execution.sql is None


def matches(run: RunRecord, execution: Execution, since: datetime) -> bool:
    created = execution.create_time
    if created is not None and created < since - CLOCK_SKEW:
        return False

    return (
        workflow_matches(run, execution)
        and window_matches(run.request, execution)
        and parameters_match(run.request, execution)
    )


def best_match(
    run: RunRecord, executions: Iterable[Execution], since: datetime
) -> Execution | None:
    """The earliest matching execution: a later one would be a duplicate."""
    found = [e for e in executions if matches(run, e, since)]
    if not found:
        return None

    return min(found, key=lambda e: (e.create_time is None, e.create_time, e.id))
