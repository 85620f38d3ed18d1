from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.amc.client import Execution
from scheduler.reconcile import (
    CLOCK_SKEW,
    best_match,
    matches,
    needs_sql,
    normalise_sql,
    parameters_match,
    window_matches,
    workflow_matches,
)
from scheduler.store.records import RunRecord, dedupe_key

SINCE = datetime(2026, 5, 20, 10, 0, tzinfo=UTC)
SQL = "SELECT campaign_id, SUM(impressions) FROM sponsored_ads_traffic GROUP BY 1"
NEW_YORK = "America/New_York"
WINDOW = {
    "timeWindowType": "EXPLICIT",
    "timeWindowStart": "2026-03-08T00:00:00",
    "timeWindowEnd": "2026-03-09T00:00:00",
    "timeWindowTimeZone": NEW_YORK,
}
# The same window as AMC echoes it: the original fields and UTC bounds.
ECHOED_WINDOW = {
    "timeWindowType": "EXPLICIT",
    "timeWindowStartOriginal": "2026-03-08T00:00:00",
    "timeWindowEndOriginal": "2026-03-09T00:00:00",
    "timeWindowTimeZoneOriginal": NEW_YORK,
    "timeWindowStart": "2026-03-08T05:00:00Z",
    "timeWindowEnd": "2026-03-09T04:00:00Z",
}


def saved_request(**fields: Any) -> dict[str, Any]:
    return {"workflowId": "daily-reach", **WINDOW, **fields}


def ad_hoc_request(sql: str = SQL, **fields: Any) -> dict[str, Any]:
    return {"workflow": {"sqlQuery": sql}, **WINDOW, **fields}


def run_record(request: Mapping[str, Any], **overrides: Any) -> RunRecord:
    """A run in ``submitting`` whose create call began at SINCE."""
    fields: dict[str, Any] = {
        "id": 7,
        "job": "daily",
        "account_id": "ENTITY1",
        "instance_id": "amc1",
        "dedupe_key": dedupe_key("daily", request),
        "source": "schedule",
        "state": "submitting",
        "priority": 0,
        "expected_seconds": 1200.0,
        "not_before": SINCE - timedelta(minutes=5),
        "request": request,
        "max_attempts": 3,
        "attempt": 1,
        "execution_id": None,
        "amc_status": None,
        "reason": None,
        "message": None,
        "lease_owner": "worker-1",
        "lease_expires_at": SINCE + timedelta(minutes=5),
        "claimed_at": SINCE,
        "lookup_since": SINCE,
        "cancel_requested": False,
        "results_state": None,
        "created_at": SINCE - timedelta(minutes=5),
        "updated_at": SINCE,
        "submitted_at": None,
        "started_at": None,
        "finished_at": None,
    }
    fields.update(overrides)
    return RunRecord(**fields)


def execution(**fields: Any) -> Execution:
    """AMC's flat execution object; a field given as None is left out."""
    document: dict[str, Any] = {
        "workflowExecutionId": "exec-1",
        "workflowId": "daily-reach",
        "status": "PENDING",
        "executionCategory": "SAVED_WORKFLOW",
        "createTime": "2026-05-20T10:00:04Z",
        "lastUpdatedTime": "2026-05-20T10:00:04Z",
        "parameterValues": {},
        **ECHOED_WINDOW,
    }
    document.update(fields)
    return Execution.from_json({k: v for k, v in document.items() if v is not None})


def ad_hoc(sql: str | None = SQL, **fields: Any) -> Execution:
    """An ad hoc execution; with ``sql`` as AMC shows it under includeWorkflow."""
    document: dict[str, Any] = {
        "workflowId": None,
        "executionCategory": "AD_HOC",
        "workflow": {"sqlQuery": sql} if sql is not None else None,
    }
    return execution(**{**document, **fields})


# The workflow


def test_saved_workflow_matches_by_id() -> None:
    """A saved-workflow run matches executions of its workflow id and no other."""
    run = run_record(saved_request())
    assert workflow_matches(run, execution())
    assert not workflow_matches(run, execution(workflowId="weekly-reach"))
    assert not workflow_matches(run, execution(workflowId=None))
    assert not needs_sql(run, execution())


def test_ad_hoc_sql_matches_ignoring_whitespace() -> None:
    """Ad hoc SQL is the same query whatever its spacing and line breaks."""
    run = run_record(ad_hoc_request())
    spaced = "SELECT campaign_id,\n  SUM(impressions)\tFROM sponsored_ads_traffic\n"
    assert workflow_matches(run, ad_hoc(spaced + " GROUP BY 1  "))
    assert not workflow_matches(run, ad_hoc(SQL.replace("SUM", "COUNT")))
    assert not needs_sql(run, ad_hoc(spaced + " GROUP BY 1"))


def test_ad_hoc_sql_not_shown_is_tolerated_but_flagged() -> None:
    """Without the SQL in AMC's answer the run may match, and needs the SQL fetched."""
    run = run_record(ad_hoc_request())
    hidden = ad_hoc(sql=None)
    assert workflow_matches(run, hidden)
    assert needs_sql(run, hidden)
    assert matches(run, hidden, SINCE)


def test_ad_hoc_run_with_a_workflow_id_checks_both() -> None:
    """An ad hoc run named with a workflow id rejects another id, then compares SQL."""
    run = run_record(ad_hoc_request(workflowId="named-query"))
    assert run.workflow_id == "named-query"
    assert workflow_matches(run, ad_hoc(workflowId="named-query"))
    assert workflow_matches(run, ad_hoc())
    assert not workflow_matches(run, ad_hoc(workflowId="other-query"))
    assert not workflow_matches(run, ad_hoc("SELECT 1", workflowId="named-query"))


def test_normalise_sql() -> None:
    """Runs of whitespace become one space and the ends are trimmed."""
    assert normalise_sql("  SELECT\n\t1 ,\r\n 2  ") == "SELECT 1 , 2"


@given(
    gaps=st.lists(
        st.text(alphabet=" \t\r\n", min_size=1, max_size=3), min_size=12, max_size=12
    )
)
def test_any_whitespace_between_tokens_matches(gaps: list[str]) -> None:
    """Re-spacing the query's tokens never breaks the match."""
    tokens = SQL.split()
    respaced = gaps[0] + "".join(
        token + gap for token, gap in zip(tokens, gaps[1:], strict=False)
    )
    assert workflow_matches(run_record(ad_hoc_request()), ad_hoc(respaced))


# The window


def test_window_matches_by_original_fields() -> None:
    """AMC's original fields are compared with the bounds and zone the run sent."""
    request = saved_request()
    assert window_matches(request, execution())
    assert not window_matches(
        request, execution(timeWindowStartOriginal="2026-03-07T00:00:00")
    )
    assert not window_matches(
        request, execution(timeWindowEndOriginal="2026-03-10T00:00:00")
    )
    assert not window_matches(
        request, execution(timeWindowTimeZoneOriginal="America/Chicago")
    )


def test_original_fields_take_precedence_over_utc_bounds() -> None:
    """When AMC shows the original fields, its UTC bounds are not consulted."""
    skewed = execution(
        timeWindowStart="2026-03-08T04:00:00Z", timeWindowEnd="2026-03-09T04:00:00Z"
    )
    assert window_matches(saved_request(), skewed)


def test_window_zone_defaults_to_utc() -> None:
    """A run that names no zone is in UTC, and AMC's echo must say UTC too."""
    request = {k: v for k, v in saved_request().items() if k != "timeWindowTimeZone"}
    assert window_matches(request, execution(timeWindowTimeZoneOriginal="UTC"))
    assert not window_matches(request, execution())


def test_window_zone_missing_from_the_answer_is_decided_by_utc_bounds() -> None:
    """Same local bounds but no zone shown: AMC's UTC bounds decide, where shown."""
    no_zone = {"timeWindowTimeZoneOriginal": None}
    assert window_matches(saved_request(), execution(**no_zone))
    in_utc = execution(
        **no_zone,
        timeWindowStart="2026-03-08T00:00:00Z",
        timeWindowEnd="2026-03-09T00:00:00Z",
    )
    assert not window_matches(saved_request(), in_utc)
    bare = execution(**no_zone, timeWindowStart=None, timeWindowEnd=None)
    assert window_matches(saved_request(), bare)


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        ("2026-03-08T05:00:00Z", "2026-03-09T04:00:00Z", True),
        ("2026-03-08T05:00:00.000Z", "2026-03-09T04:00:00.000Z", True),
        ("2026-03-08T00:00:00-05:00", "2026-03-09T00:00:00-04:00", True),
        ("2026-03-08T00:00:00Z", "2026-03-09T00:00:00Z", False),
        ("2026-03-08T05:00:00Z", "2026-03-09T05:00:00Z", False),
        ("2026-03-08T06:00:00Z", "2026-03-09T04:00:00Z", False),
    ],
)
def test_window_matches_by_utc_bounds(start: str, end: str, expected: bool) -> None:
    """Without original fields the run's local window is compared in UTC."""
    echoed = execution(
        timeWindowStartOriginal=None,
        timeWindowEndOriginal=None,
        timeWindowTimeZoneOriginal=None,
        timeWindowStart=start,
        timeWindowEnd=end,
    )
    assert window_matches(saved_request(), echoed) is expected


def test_window_in_the_repeated_hour_is_compared_at_its_first_pass() -> None:
    """A bound in New York's repeated 01:00 hour is its first pass, as AMC reads it."""
    request = saved_request(
        timeWindowStart="2026-11-01T01:30:00", timeWindowEnd="2026-11-01T03:00:00"
    )
    echoed = {
        "timeWindowStartOriginal": None,
        "timeWindowEndOriginal": None,
        "timeWindowTimeZoneOriginal": None,
    }
    first = execution(
        **echoed,
        timeWindowStart="2026-11-01T05:30:00Z",
        timeWindowEnd="2026-11-01T08:00:00Z",
    )
    second = execution(
        **echoed,
        timeWindowStart="2026-11-01T06:30:00Z",
        timeWindowEnd="2026-11-01T08:00:00Z",
    )
    assert window_matches(request, first)
    assert not window_matches(request, second)


def test_window_without_bounds_in_the_answer_is_tolerated() -> None:
    """If AMC shows no bounds at all, the window does not rule the execution out."""
    bare = execution(
        timeWindowStartOriginal=None,
        timeWindowEndOriginal=None,
        timeWindowTimeZoneOriginal=None,
        timeWindowStart=None,
        timeWindowEnd=None,
    )
    assert window_matches(saved_request(), bare)
    only_start = execution(timeWindowEndOriginal=None, timeWindowEnd=None)
    assert window_matches(saved_request(), only_start)


def test_window_type_must_agree() -> None:
    """Different window types never match; an unshown type is tolerated."""
    relative = {"workflowId": "daily-reach", "timeWindowType": "MOST_RECENT_DAY"}
    assert not window_matches(
        saved_request(), execution(timeWindowType="CURRENT_MONTH")
    )
    assert not window_matches(relative, execution())
    assert window_matches(relative, execution(timeWindowType="MOST_RECENT_DAY"))
    assert window_matches(saved_request(), execution(timeWindowType=None))


def test_default_window_type_is_most_recent_day() -> None:
    """A run that names no window type is AMC's default, MOST_RECENT_DAY."""
    request = {"workflowId": "daily-reach"}
    assert window_matches(request, execution(timeWindowType="MOST_RECENT_DAY"))
    assert not window_matches(request, execution(timeWindowType="MOST_RECENT_WEEK"))


# Parameter values


@pytest.mark.parametrize(
    ("ours", "theirs", "expected"),
    [
        ({"country": "US", "days": 7}, {"days": 7, "country": "US"}, True),
        ({"country": "US"}, {"country": "GB"}, False),
        ({"country": "US"}, {"country": "US", "days": 7}, False),
        ({"days": 7, "share": 0.5}, {"days": "7", "share": "0.5"}, True),
        ({"flag": True}, {"flag": "true"}, True),
        ({"flag": True}, {"flag": "false"}, False),
        ({"ids": [1, 2, 3]}, {"ids": ["1", "2", "3"]}, True),
        ({"ids": [1, 2, 3]}, {"ids": ["3", "2", "1"]}, False),
        ({"f": {"a": 1}}, {"f": {"a": "1"}}, True),
        ({"days": 7}, {"days": "8"}, False),
        ({"days": 7}, {}, False),
        (None, {}, True),
        (None, {"days": 7}, False),
    ],
)
def test_parameter_values(
    ours: dict[str, Any] | None, theirs: dict[str, Any], expected: bool
) -> None:
    """Values must agree, allowing AMC to echo numbers and booleans as strings."""
    request = saved_request() if ours is None else saved_request(parameterValues=ours)
    assert parameters_match(request, execution(parameterValues=theirs)) is expected


def test_parameter_values_not_shown_are_tolerated() -> None:
    """If AMC's answer has no parameterValues at all, parameters do not rule it out."""
    request = saved_request(parameterValues={"country": "US"})
    assert parameters_match(request, execution(parameterValues=None))


scalars = st.one_of(
    st.integers(-(10**6), 10**6), st.booleans(), st.text(max_size=8), st.none()
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)


def as_amc_echoes(value: Any) -> Any:
    """Scalars as strings, the way AMC may hand parameter values back."""
    if isinstance(value, dict):
        return {key: as_amc_echoes(item) for key, item in value.items()}

    if isinstance(value, list):
        return [as_amc_echoes(item) for item in value]

    if isinstance(value, bool):
        return "true" if value else "false"

    return value if value is None or isinstance(value, str) else str(value)


@given(parameters=st.dictionaries(st.text(min_size=1, max_size=6), values, max_size=4))
def test_parameters_echoed_as_strings_still_match(parameters: dict[str, Any]) -> None:
    """Parameters match themselves, as sent and with every scalar echoed as a string."""
    request = saved_request(parameterValues=parameters)
    assert parameters_match(request, execution(parameterValues=parameters))
    assert parameters_match(
        request, execution(parameterValues=as_amc_echoes(parameters))
    )


# Creation time and the whole match


def test_executions_created_before_the_lookup_are_excluded() -> None:
    """An execution older than the create call, beyond clock skew, is not the run's."""
    run = run_record(saved_request())
    skew = timedelta(minutes=2)
    assert skew == CLOCK_SKEW
    just_inside = (SINCE - skew).isoformat()
    just_outside = (SINCE - skew - timedelta(seconds=1)).isoformat()
    assert matches(run, execution(createTime=just_inside), SINCE)
    assert not matches(run, execution(createTime=just_outside), SINCE)
    assert not matches(run, execution(createTime="2026-05-19T10:00:00Z"), SINCE)
    assert matches(run, execution(createTime=None), SINCE)


@pytest.mark.parametrize(
    "different",
    [
        {"workflowId": "weekly-reach"},
        {"timeWindowStartOriginal": "2026-03-01T00:00:00"},
        {"timeWindowType": "MOST_RECENT_DAY"},
        {"parameterValues": {"country": "GB"}},
    ],
)
def test_matches_needs_workflow_window_and_parameters(
    different: dict[str, Any],
) -> None:
    """One differing part, workflow, window or parameters, rules the execution out."""
    run = run_record(saved_request(parameterValues={"country": "US"}))
    assert matches(run, execution(parameterValues={"country": "US"}), SINCE)
    changed = {"parameterValues": {"country": "US"}, **different}
    assert not matches(run, execution(**changed), SINCE)


def test_wrapped_execution_objects_match_too() -> None:
    """The OpenAPI file's wrapped form is read like the flat one."""
    flat = execution()
    wrapped = Execution.from_json({"workflowExecution": dict(flat.raw)})
    assert matches(run_record(saved_request()), wrapped, SINCE)


def test_best_match_is_the_earliest_matching_execution() -> None:
    """Of several matching executions the first created wins; later ones are copies."""
    run = run_record(saved_request())
    found = [
        execution(workflowExecutionId="late", createTime="2026-05-20T10:05:00Z"),
        execution(workflowExecutionId="early", createTime="2026-05-20T10:00:05Z"),
        execution(workflowExecutionId="stale", createTime="2026-05-20T09:00:00Z"),
        execution(
            workflowExecutionId="other",
            workflowId="weekly-reach",
            createTime="2026-05-20T10:00:01Z",
        ),
        execution(workflowExecutionId="undated", createTime=None),
    ]
    best = best_match(run, found, SINCE)
    assert best is not None
    assert best.id == "early"


def test_best_match_orders_ties_by_id_and_undated_last() -> None:
    """Equal creation times fall back to the id; an undated execution comes last."""
    run = run_record(saved_request())
    same = "2026-05-20T10:00:05Z"
    found = [
        execution(workflowExecutionId="b", createTime=same),
        execution(workflowExecutionId="a", createTime=same),
    ]
    tied = best_match(run, found, SINCE)
    assert tied is not None
    assert tied.id == "a"
    undated = [
        execution(workflowExecutionId="z", createTime=None),
        execution(workflowExecutionId="y", createTime=None),
    ]
    last = best_match(run, [*undated, found[0]], SINCE)
    assert last is not None
    assert last.id == "b"
    first_undated = best_match(run, undated, SINCE)
    assert first_undated is not None
    assert first_undated.id == "y"


def test_best_match_none_when_nothing_matches() -> None:
    """No matching execution gives None, so the run may be submitted again."""
    run = run_record(saved_request())
    assert best_match(run, [], SINCE) is None
    assert best_match(run, [execution(workflowId="weekly-reach")], SINCE) is None
