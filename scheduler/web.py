"""The HTTP side: ``/health``, ``/metrics``, the JSON API and the status page.

Reads are open (bind to loopback, the default, or put a proxy in front);
write calls need ``Authorization: Bearer <server.api_token>``, and with no
token configured writes are refused.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, generate_latest
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Settings, next_fire_times
from .errors import DatabaseUnavailable, InvalidInput, NotFound, SchedulerError
from .health import HealthCheck
from .logs import get_logger
from .metrics import PREFIX, Metrics
from .openapi import document as openapi_document
from .operations import enqueue_job, run_json
from .statuspage import render
from .store import Database
from .store.history import list_runs, run_detail
from .store.models import RunState
from .store.records import RunRecord

log = get_logger(__name__)

MAX_BODY = 64 * 1024
MAX_PAGE = 500


@dataclass
class WebContext:
    db: Database
    settings: Callable[[], Settings]
    health: HealthCheck
    metrics: Metrics
    cancel: Callable[[int], Awaitable[RunRecord]]
    worker_id: str


CONTEXT = web.AppKey("context", WebContext)


class RunRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    job: str = Field(min_length=1, max_length=200)
    window: dict[str, Any] | None = None
    parameters: dict[str, Any] | None = None


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)


@web.middleware
async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure answers JSON with one line saying what is wrong."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise

        return _error(exc.status, exc.reason)
    except NotFound as exc:
        return _error(404, str(exc))
    except InvalidInput as exc:
        return _error(400, str(exc))
    except DatabaseUnavailable as exc:
        return _error(503, str(exc))
    except SchedulerError as exc:
        log.warning("request_failed", path=request.path, error=str(exc))
        return _error(500, str(exc))
    except Exception:
        log.exception("request_crashed", path=request.path)
        return _error(500, "internal error")


def _authorised(request: web.Request) -> web.Response | None:
    token = request.app[CONTEXT].settings().server.api_token
    if token is None:
        return _error(403, "writes are disabled: set server.api_token to enable them")

    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    expected = token.get_secret_value().encode()
    offered = value.strip().encode("utf-8", errors="replace")
    if scheme.lower() != "bearer" or not hmac.compare_digest(offered, expected):
        return _error(
            401, "a valid bearer token is required", **{"WWW-Authenticate": "Bearer"}
        )

    return None


async def _json_body(request: web.Request) -> Any:
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(
            max_size=MAX_BODY, actual_size=request.content_length
        )

    raw = await request.content.read(MAX_BODY + 1)
    if len(raw) > MAX_BODY:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY, actual_size=len(raw))

    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise InvalidInput("the body is not valid JSON") from None
    except RecursionError:
        raise InvalidInput("the body is nested too deeply") from None

    _refuse_nul(body, "body")
    return body


def _refuse_nul(value: Any, where: str) -> None:
    """Postgres stores no NUL character: refuse it at the door, by its place."""
    if isinstance(value, str):
        if "\x00" in value:
            raise InvalidInput(f"{where}: NUL characters are not allowed")
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_nul(key, where)
            _refuse_nul(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _refuse_nul(item, f"{where}[{index}]")


def _int_query(
    request: web.Request, name: str, default: int | None, low: int, high: int
) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default

    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name}: expected a whole number, got {raw!r}") from None

    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be between {low} and {high}")

    return value


# Handlers


async def health(request: web.Request) -> web.Response:
    report = await request.app[CONTEXT].health.report()
    return web.json_response(report.document, status=200 if report.healthy else 503)


class _Gauges:
    def __init__(self, metrics: Metrics) -> None:
        registry = metrics.registry
        self.runs = Gauge(
            f"{PREFIX}_runs", "Runs in each state.", ["state"], registry=registry
        )
        self.slots = Gauge(
            f"{PREFIX}_slots_in_use",
            "Slots held (runs in flight and outside executions).",
            ["scope", "id"],
            registry=registry,
        )
        self.limits = Gauge(
            f"{PREFIX}_slot_limit",
            "Parallel limit.",
            ["scope", "id"],
            registry=registry,
        )
        self.external = Gauge(
            f"{PREFIX}_external_executions",
            "Executions started outside the scheduler that hold slots.",
            ["instance"],
            registry=registry,
        )
        self.up = Gauge(
            f"{PREFIX}_healthy", "1 while /health answers 200.", registry=registry
        )


GAUGES = web.AppKey("gauges", _Gauges)


async def metrics(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    gauges = request.app[GAUGES]
    report = await context.health.report()
    document = report.document
    gauges.up.set(1 if report.healthy else 0)
    for state, count in document.get("queue", {}).items():
        gauges.runs.labels(state).set(count)

    for instance in document.get("instances", []):
        gauges.slots.labels("instance", instance["id"]).set(instance["in_flight"])
        gauges.limits.labels("instance", instance["id"]).set(instance["limit"])
        gauges.external.labels(instance["id"]).set(instance.get("external", 0))

    for account in document.get("accounts", []):
        gauges.slots.labels("account", account["id"]).set(account["in_flight"])
        gauges.limits.labels("account", account["id"]).set(account["limit"])

    body = generate_latest(context.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def jobs(request: web.Request) -> web.Response:
    from datetime import UTC, datetime

    settings = request.app[CONTEXT].settings()
    now = datetime.now(UTC)
    found = []
    for job in settings.jobs:
        upcoming = next_fire_times(job, now)
        found.append(
            {
                "name": job.name,
                "instance": job.instance,
                "account": settings.account_of(job.instance).id,
                "workflow_id": job.workflow_id,
                "ad_hoc": job.sql is not None,
                "schedule": job.schedule,
                "time_zone": job.time_zone,
                "time_window": job.time_window.model_dump(mode="json"),
                "parameters": job.parameters,
                "priority": job.priority,
                "max_attempts": job.max_attempts,
                "next_fire_time": upcoming[0].isoformat() if upcoming else None,
            }
        )

    return web.json_response({"jobs": found})


async def runs_index(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    for name, value in request.query.items():
        _refuse_nul(value, name)

    states = [
        value
        for raw in request.query.getall("state", [])
        for value in raw.split(",")
        if value
    ]
    known = {state.value for state in RunState}
    unknown = [s for s in states if s not in known]
    if unknown:
        raise InvalidInput(
            f"state: unknown {unknown[0]!r} (known: {', '.join(sorted(known))})"
        )

    page = await list_runs(
        context.db,
        job=request.query.get("job") or None,
        states=states,
        limit=_int_query(request, "limit", 50, 1, MAX_PAGE) or 50,
        before=_int_query(request, "before", None, 1, 2**62),
    )
    return web.json_response(
        {"runs": [run_json(run) for run in page.runs], "next_before": page.next_before}
    )


def _run_id(request: web.Request) -> int:
    raw = request.match_info["run_id"]
    try:
        value = int(raw)
    except ValueError:
        raise NotFound(f"no run {raw!r}") from None

    if not 0 < value < 2**62:
        raise NotFound(f"no run {raw!r}")

    return value


async def run_show(request: web.Request) -> web.Response:
    detail = await run_detail(request.app[CONTEXT].db, _run_id(request))
    if detail is None:
        raise NotFound(f"no run {request.match_info['run_id']}")

    return web.json_response(
        {
            **run_json(detail.run),
            "events": detail.events,
            "attempts": detail.attempts,
            "files": detail.files,
        }
    )


async def run_create(request: web.Request) -> web.Response:
    refused = _authorised(request)
    if refused is not None:
        return refused

    context = request.app[CONTEXT]
    body = await _json_body(request)
    try:
        wanted = RunRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise InvalidInput(f"{where}: {first['msg']}") from None

    result = await enqueue_job(
        context.db,
        context.settings(),
        wanted.job,
        window=wanted.window,
        parameters=wanted.parameters,
        source="api",
        worker_id=context.worker_id,
    )
    return web.json_response(
        {"run": run_json(result.run), "created": result.created},
        status=201 if result.created else 200,
    )


async def run_cancel(request: web.Request) -> web.Response:
    refused = _authorised(request)
    if refused is not None:
        return refused

    context = request.app[CONTEXT]
    try:
        run = await context.cancel(_run_id(request))
    except InvalidInput as exc:
        return _error(409, str(exc))

    return web.json_response({"run": run_json(run)})


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(openapi_document())


async def status_page(request: web.Request) -> web.Response:
    context = request.app[CONTEXT]
    report = await context.health.report()
    try:
        recent = (await list_runs(context.db, limit=50)).runs
    except DatabaseUnavailable:
        recent = []

    html = render(
        report.document,
        recent,
        refresh_seconds=context.settings().server.status_refresh.total_seconds(),
    )
    return web.Response(
        text=html,
        content_type="text/html",
        status=200 if report.healthy else 503,
        headers={
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
            "X-Content-Type-Options": "nosniff",
        },
    )


def create_app(context: WebContext) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY, middlewares=[errors])
    app[CONTEXT] = context
    app[GAUGES] = _Gauges(context.metrics)
    app.router.add_get("/", status_page)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/openapi.json", openapi)
    app.router.add_get("/api/jobs", jobs)
    app.router.add_get("/api/runs", runs_index)
    app.router.add_post("/api/runs", run_create)
    app.router.add_get("/api/runs/{run_id}", run_show)
    app.router.add_post("/api/runs/{run_id}/cancel", run_cancel)
    return app
