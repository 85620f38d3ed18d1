"""AMC's wire formats as the simulator reads and writes them.

Requests come in checked as strictly as AMC's documented formats allow: a
create body becomes a ``CreateRequest`` or a 400, query strings become typed
values or a 400. Answers go out as AMC shapes them: flat execution objects
with real UTC times, ``{"code", "details"}`` errors, result files, and the
throttle and gateway pages a client must survive.

Unknown create fields are ignored rather than refused, because the public
record does not say how AMC treats them and job configs may pass extra
fields through; ``null`` counts as absent.
"""

from __future__ import annotations

import base64
import hashlib
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..errors import SchedulerError
from ..windows import zone

if TYPE_CHECKING:
    from .simstate import Execution, SimState

WINDOW_TYPES = (
    "EXPLICIT",
    "MOST_RECENT_DAY",
    "MOST_RECENT_WEEK",
    "CURRENT_MONTH",
    "PREVIOUS_MONTH",
    "ALL",
)
JSON_TYPES = frozenset(
    {"application/json", "application/vnd.amcworkflowexecutions.v1+json"}
)
PASS_THROUGH = (
    "ignoreDataGaps",
    "dryRun",
    "skipPublish",
    "outputFormat",
    "advertisers",
    "maxCertifiedTime",
    "requireSyntheticData",
    "disableAggregationControls",
    "inputParameters",
)
MAX_PAGE = 1000
SAVED_SQL = (
    "SELECT campaign_id, COUNT(*) AS impressions FROM dsp_impressions"
    " GROUP BY campaign_id"
)
WindowKey = tuple[str, str, str, str]

_AMC_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
_LOCAL_FORMAT = "%Y-%m-%dT%H:%M:%S"
_UTC_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_HTML_429 = (
    "<html><head><title>429 Too Many Requests</title></head>"
    "<body><h1>429 Too Many Requests</h1></body></html>"
)
_HTML_GATEWAY = (
    "<html><head><title>{status} Gateway Error</title></head>"
    "<body><h1>{status}</h1><p>The gateway could not reach the service.</p>"
    "</body></html>"
)
_HTML_OK = "<html><body><h1>Amazon Advertising</h1><p>Loading...</p></body></html>"


class Rejected(SchedulerError):
    """A request the simulated AMC refuses; ``kind`` names its stats bucket."""

    def __init__(self, status: int, details: str, kind: str = "invalid") -> None:
        super().__init__(details)
        self.status = status
        self.details = details
        self.kind = kind


def invalid(details: str) -> Rejected:
    return Rejected(400, details)


def error(status: int, details: str) -> web.Response:
    return web.json_response({"code": str(status), "details": details}, status=status)


# Create requests and their time windows


@dataclass(frozen=True)
class CreateRequest:
    """A create body that passed validation, before AMC decides its fate."""

    workflow_id: str | None = None
    sql: str | None = None
    window_type: str = "MOST_RECENT_DAY"
    window_start: str | None = None
    window_end: str | None = None
    time_zone: str = "UTC"
    parameter_values: Mapping[str, Any] = field(default_factory=dict)
    timeout_seconds: int | None = None
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Window:
    """A time window as given, with its bounds resolved to UTC instants."""

    type: str
    time_zone: str
    start: str | None
    end: str | None
    utc_start: datetime
    utc_end: datetime

    def key(self) -> WindowKey:
        return (
            self.type,
            utc_text(self.utc_start),
            utc_text(self.utc_end),
            self.time_zone,
        )


def utc_text(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(_UTC_FORMAT)


def _month(first: datetime, offset: int) -> datetime:
    index = first.year * 12 + first.month - 1 + offset
    return first.replace(year=index // 12, month=index % 12 + 1)


def resolve_window(request: CreateRequest, at: datetime) -> Window:
    """The window's UTC bounds; AMC's own types resolve against the date at ``at``."""
    tz = zone(request.time_zone)
    if request.window_start is not None and request.window_end is not None:
        start = datetime.strptime(request.window_start, _LOCAL_FORMAT)
        end = datetime.strptime(request.window_end, _LOCAL_FORMAT)
    else:
        local = at.astimezone(tz).replace(tzinfo=None)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        first = midnight.replace(day=1)
        start, end = {
            "MOST_RECENT_DAY": (midnight - timedelta(days=1), midnight),
            "MOST_RECENT_WEEK": (midnight - timedelta(days=7), midnight),
            "CURRENT_MONTH": (first, _month(first, 1)),
            "PREVIOUS_MONTH": (_month(first, -1), first),
        }.get(request.window_type, (_month(first, -13), midnight))

    return Window(
        type=request.window_type,
        time_zone=request.time_zone,
        start=request.window_start,
        end=request.window_end,
        utc_start=start.replace(tzinfo=tz).astimezone(UTC),
        utc_end=end.replace(tzinfo=tz).astimezone(UTC),
    )


# Requests


def amc_time(name: str, value: object) -> datetime:
    """``yyyy-MM-ddTHH:mm:ss`` exactly: no ``Z``, no offset, no fraction."""
    if not isinstance(value, str) or not _AMC_TIME.fullmatch(value):
        raise invalid(
            f"{name} must be in the format yyyy-MM-ddTHH:mm:ss, got {value!r}"
        )

    try:
        return datetime.strptime(value, _LOCAL_FORMAT)
    except ValueError:
        raise invalid(f"{name} is not a valid time: {value!r}") from None


def parse_create(body: object) -> CreateRequest:
    """A create body checked the way AMC checks it; Rejected (400) otherwise."""
    if not isinstance(body, dict):
        raise invalid("The request body must be a JSON object")

    given = {key: value for key, value in body.items() if value is not None}
    workflow = given.get("workflow", {})
    if not isinstance(workflow, dict):
        raise invalid("workflow must be an object")

    saved, sql = given.get("workflowId"), workflow.get("sqlQuery")
    if (saved is None) == (sql is None):
        raise invalid(
            "Give exactly one of workflowId (a saved workflow)"
            " and workflow.sqlQuery (an ad hoc query)"
        )

    workflow_id = saved if saved is not None else workflow.get("workflowId")
    for name, value in (("workflowId", workflow_id), ("workflow.sqlQuery", sql)):
        if value is not None and not (isinstance(value, str) and value.strip()):
            raise invalid(f"{name} must be a non-empty string")

    # The time window
    window_type = given.get("timeWindowType", "MOST_RECENT_DAY")
    if window_type not in WINDOW_TYPES:
        raise invalid(
            f"timeWindowType must be one of {', '.join(WINDOW_TYPES)},"
            f" got {window_type!r}"
        )

    time_zone = given.get("timeWindowTimeZone", "UTC")
    try:
        zone(time_zone if isinstance(time_zone, str) else "")
    except ValueError:
        raise invalid(f"timeWindowTimeZone {time_zone!r} is not an IANA zone") from None

    start, end = given.get("timeWindowStart"), given.get("timeWindowEnd")
    explicit = window_type == "EXPLICIT"
    if explicit and amc_time("timeWindowStart", start) >= amc_time(
        "timeWindowEnd", end
    ):
        raise invalid("timeWindowStart must be before timeWindowEnd")

    if not explicit and (start is not None or end is not None):
        raise invalid(
            "timeWindowStart and timeWindowEnd are allowed only with EXPLICIT"
        )

    # Everything else
    values = given.get("parameterValues", {})
    if not isinstance(values, dict):
        raise invalid("parameterValues must be an object")

    timeout = given.get("workflowExecutionTimeoutSeconds")
    if timeout is not None and (
        not isinstance(timeout, int) or isinstance(timeout, bool) or timeout <= 0
    ):
        raise invalid("workflowExecutionTimeoutSeconds must be a positive integer")

    return CreateRequest(
        workflow_id=workflow_id,
        sql=sql,
        window_type=window_type,
        window_start=start,
        window_end=end,
        time_zone=time_zone,
        parameter_values=values,
        timeout_seconds=timeout,
        extras={key: given[key] for key in PASS_THROUGH if key in given},
    )


async def json_body(request: web.Request) -> Any:
    if request.content_type not in JSON_TYPES:
        raise Rejected(415, f"Unsupported Content-Type {request.content_type!r}")

    try:
        return await request.json()
    except ValueError:
        raise invalid("The request body is not valid JSON") from None


def query_bool(query: Mapping[str, str], name: str, default: bool) -> bool:
    value = query.get(name)
    if value is None:
        return default

    if value.lower() not in ("true", "false"):
        raise invalid(f"{name} must be true or false, got {value!r}")

    return value.lower() == "true"


def query_time(query: Mapping[str, str], name: str) -> datetime | None:
    """A list filter's time, read as UTC."""
    value = query.get(name)
    return None if value is None else amc_time(name, value).replace(tzinfo=UTC)


def query_limit(query: Mapping[str, str], default: int) -> int:
    """The page size asked for; above MAX_PAGE is cut to it, not refused."""
    value = query.get("limit")
    if value is None:
        return default

    if not value.isdigit() or int(value) < 1:
        raise invalid(f"limit must be a positive integer, got {value!r}")

    return min(int(value), MAX_PAGE)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode()


def query_cursor(query: Mapping[str, str]) -> int | None:
    """The sequence number a ``nextToken`` continues after."""
    token = query.get("nextToken")
    if token is None:
        return None

    try:
        text = base64.urlsafe_b64decode(token.encode()).decode()
        prefix, _, seq = text.partition(":")
        after = int(seq) if prefix == "after" else None
    except ValueError:
        after = None

    if after is None:
        raise invalid("nextToken is not a token this API issued")

    return after


# Answers


def document(
    state: SimState, execution: Execution, include_workflow: bool = False
) -> dict[str, Any]:
    """An execution as AMC answers it: flat, times in real UTC."""
    now = state.now()
    status = execution.status(now)
    window = execution.window
    timeout = execution.timeout_seconds
    body: dict[str, Any] = {
        "workflowExecutionId": execution.id,
        "workflowId": execution.workflow_id,
        "status": status,
        "executionCategory": "SAVED" if execution.sql is None else "ADHOC",
        "createTime": state.timestamp(execution.created),
        "lastUpdatedTime": state.timestamp(execution.last_updated(now)),
        "expireTime": state.timestamp(
            execution.created + timeout / state.options.speed
        ),
        "timeWindowType": window.type,
        "timeWindowStart": utc_text(window.utc_start),
        "timeWindowEnd": utc_text(window.utc_end),
        "timeWindowTimeZoneOriginal": window.time_zone,
        "parameterValues": dict(execution.parameter_values),
        "workflowExecutionTimeoutSeconds": timeout,
        "outputS3URI": (
            f"s3://amc-simulator-output/{execution.instance_id}"
            f"/{execution.workflow_id}/{execution.id}/"
        ),
        **execution.extras,
    }
    if window.start is not None and window.end is not None:
        body["timeWindowStartOriginal"] = window.start
        body["timeWindowEndOriginal"] = window.end

    if status == "FAILED":
        body["statusReason"] = execution.status_reason

    if include_workflow:
        body["workflow"] = {
            "workflowId": execution.workflow_id,
            "sqlQuery": execution.sql or SAVED_SQL,
        }

    return body


def timeline(state: SimState, execution: Execution) -> dict[str, Any]:
    """An execution as /sim/executions shows it, in real epoch seconds."""
    window = execution.window
    return {
        "id": execution.id,
        "instance_id": execution.instance_id,
        "account_id": execution.account_id,
        "workflow_id": execution.workflow_id,
        "status": execution.status(state.now()),
        "status_reason": execution.status_reason,
        "origin": execution.origin,
        "created_at": state.wall(execution.created),
        "started_at": state.wall(min(execution.started, execution.ended)),
        "ended_at": state.wall(execution.ended),
        "identity": execution.identity,
        "window": {
            "type": window.type,
            "start": window.start,
            "end": window.end,
            "time_zone": window.time_zone,
        },
        "parameter_values": dict(execution.parameter_values),
    }


def results_csv(execution: Execution) -> str:
    """A small table that is the same every time for the same execution."""
    digest = hashlib.sha256(execution.id.encode()).digest()
    rows = ["campaign_id,impressions,clicks"]
    for index in range(5):
        impressions = int.from_bytes(digest[index * 4 : index * 4 + 4], "big") % 100000
        rows.append(f"campaign-{index + 1},{impressions},{impressions // (20 + index)}")

    return "\n".join(rows) + "\n"


def metadata(execution: Execution) -> dict[str, Any]:
    return {
        "workflowExecutionId": execution.id,
        "workflowId": execution.workflow_id,
        "columns": [
            {"name": "campaign_id", "type": "STRING"},
            {"name": "impressions", "type": "LONG"},
            {"name": "clicks", "type": "LONG"},
        ],
        "rowCount": 5,
        "timeWindowStart": utc_text(execution.window.utc_start),
        "timeWindowEnd": utc_text(execution.window.utc_end),
    }


# Faulty answers


def throttled(rng: random.Random, retry_after: float) -> web.Response:
    """A 429 without limit words: from the API as JSON, or from a gateway."""
    headers = {"Retry-After": f"{retry_after:g}"}
    if rng.random() < 0.5:
        return web.json_response(
            {"message": "Too Many Requests"}, status=429, headers=headers
        )

    return web.Response(
        text=_HTML_429, status=429, content_type="text/html", headers=headers
    )


def server_error(rng: random.Random) -> web.Response:
    status = rng.choice((500, 502, 503, 504))
    if status == 500:
        return error(500, "Internal Server Error")

    if status == 503:
        return web.json_response({"message": "Service Unavailable"}, status=503)

    page = _HTML_GATEWAY.format(status=status)
    return web.Response(text=page, status=status, content_type="text/html")


def malformed(rng: random.Random, answer: web.StreamResponse | None) -> web.Response:
    """A 200 a client cannot parse: the real answer cut short, or an HTML page."""
    text = answer.text if isinstance(answer, web.Response) else None
    if rng.random() < 0.5:
        cut = text[: len(text) // 2] if text else '{"workflowExecutionId": "'
        return web.Response(text=cut, content_type="application/json")

    return web.Response(text=_HTML_OK, content_type="text/html")
