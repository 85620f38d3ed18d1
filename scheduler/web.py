"""The HTTP side: ``/health`` now; metrics, the JSON API and the status page join it."""

from __future__ import annotations

from aiohttp import web

from .health import HealthCheck
from .logs import get_logger

log = get_logger(__name__)

HEALTH_KEY = web.AppKey("health", HealthCheck)


async def health(request: web.Request) -> web.Response:
    report = await request.app[HEALTH_KEY].report()
    return web.json_response(report.document, status=200 if report.healthy else 503)


def create_app(health_check: HealthCheck) -> web.Application:
    app = web.Application(client_max_size=1024 * 1024)
    app[HEALTH_KEY] = health_check
    app.router.add_get("/health", health)
    return app
