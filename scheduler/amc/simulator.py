"""A simulated AMC and Login-with-Amazon token endpoint, served over real HTTP.

The scheduler's own aiohttp client, dispatcher and benchmarks run against it:
it checks the headers AMC checks, validates create bodies, enforces the
parallel limits and the privacy rule, and answers with AMC's shapes. Seeded
faults (slow answers, throttles, 5xx, malformed bodies, creates that succeed
behind an error) exercise the client's retry and recovery paths. ``/sim/...``
is the simulator's own inspection and control surface and needs no token.

The parts: ``simoptions`` (what can be configured), ``simstate`` (the model:
executions on a clock, limits, privacy, stats), ``simwire`` (request checks
and answer shapes) and this module (the HTTP application and its server).

Simplifications: only the execution calls exist, not saved workflows or
AMC's own schedules; ``GET /amc/accounts`` needs only the token and client
id, since a caller asks it which advertiser to use; faults are drawn after
the caller's credentials pass, so a refused request is never also a fault.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict
from types import TracebackType
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from ..logs import get_logger
from . import simwire as wire
from .simoptions import (
    AccountSpec,
    FaultOptions,
    SimulatorOptions,
    options_from_settings,
)
from .simstate import Clock, SimState
from .simwire import Rejected, error

__all__ = [
    "AccountSpec",
    "FaultOptions",
    "Simulator",
    "SimulatorOptions",
    "SimulatorServer",
    "options_from_settings",
    "serve",
]

log = get_logger(__name__)

_EXECUTIONS = "/amc/reporting/{instance_id}/workflowExecutions"
_EXECUTION = _EXECUTIONS + "/{execution_id}"
# Route names that count under another request kind in the stats.
_ROUTE_KINDS = {"cancel_by_delete": "cancel"}


def _oauth_error(status: int, code: str, description: str) -> web.Response:
    body = {"error": code, "error_description": description}
    return web.json_response(body, status=status)


class Simulator:
    """One simulated AMC: its state and the aiohttp application that serves it."""

    def __init__(
        self, options: SimulatorOptions | None = None, clock: Clock | None = None
    ) -> None:
        self.options = options or SimulatorOptions()
        self.state = SimState(self.options, clock or time.monotonic)
        self.app = web.Application(middlewares=[self._count, self._guard, self._faults])
        self.app.add_routes(
            [
                web.post("/auth/o2/token", self._token, name="token"),
                web.get("/amc/accounts", self._accounts, name="accounts"),
                web.get("/amc/instances", self._instances, name="instances"),
                web.post(_EXECUTIONS, self._create, name="create"),
                web.get(_EXECUTIONS, self._list, name="list"),
                web.get(_EXECUTION, self._get, name="get"),
                web.put(_EXECUTION, self._cancel, name="cancel"),
                web.delete(_EXECUTION, self._cancel, name="cancel_by_delete"),
                web.get(
                    _EXECUTION + "/downloadUrls",
                    self._download_urls,
                    name="download_urls",
                ),
                web.get("/sim/files/{token}/{name}", self._file, name="download"),
                web.get("/sim/stats", self._stats, name="sim_stats"),
                web.get("/sim/executions", self._executions, name="sim_executions"),
                web.post("/sim/ui-executions", self._ui_executions, name="sim_ui"),
                web.post("/sim/faults", self._set_faults, name="sim_faults"),
            ]
        )

    # The Python API

    def now(self) -> float:
        """The simulator's clock (``time.monotonic`` unless one was injected)."""
        return self.state.now()

    def stats(self) -> dict[str, Any]:
        """What GET /sim/stats answers: counters, peaks, violations, faults."""
        return self.state.stats()

    def executions(self) -> list[dict[str, Any]]:
        """Every execution with its timeline in real epoch seconds."""
        return [wire.timeline(self.state, e) for e in self.state.all_executions()]

    def add_ui_executions(
        self,
        instance_id: str,
        count: int,
        duration: float,
        account_id: str | None = None,
    ) -> list[str]:
        """Executions "started from the AMC UI": they hold slots for ``duration``
        simulated seconds and, like work started outside the API, ignore limits.
        """
        ids = self.state.add_ui_executions(instance_id, count, duration, account_id)
        log.info("ui_executions_added", instance_id=instance_id, count=len(ids))
        return ids

    def set_faults(self, faults: FaultOptions) -> None:
        """Replace the faults; later requests draw against the new rates."""
        self.state.faults = faults
        log.info("faults_set", **asdict(faults))

    # Middlewares: count, then check the caller, then inject faults

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        name = request.match_info.route.name or "other"
        if not name.startswith("sim_"):
            self.state.requests[_ROUTE_KINDS.get(name, name)] += 1

        try:
            return await handler(request)
        except web.HTTPException as exc:
            # Unknown paths and methods answer in AMC's error shape too.
            if exc.status < 400 or not request.path.startswith("/amc/"):
                raise

            return error(exc.status, exc.reason)

    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        if not request.path.startswith("/amc/"):
            return await handler(request)

        route = request.match_info.route.name
        try:
            self._authorise(request, route)
        except Rejected as rejection:
            if route == "create":
                self.state.rejected[rejection.kind] += 1

            log.info("request_refused", path=request.path, status=rejection.status)
            return error(rejection.status, rejection.details)

        return await handler(request)

    def _authorise(self, request: web.Request, route: str | None) -> None:
        """AMC's checks, in its order: token, client id, account, instance."""
        headers = request.headers
        scheme, _, token = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not self.state.token_valid(token.strip()):
            raise Rejected(
                401, "Unauthorized: the access token is invalid or expired", "auth"
            )

        if headers.get("Amazon-Advertising-API-ClientId") != self.options.client_id:
            raise Rejected(
                403,
                "Forbidden: Amazon-Advertising-API-ClientId is missing or wrong",
                "auth",
            )

        if route in (None, "accounts"):
            return

        account_id = self.state.account_for(
            headers.get("Amazon-Advertising-API-AdvertiserId"),
            headers.get("Amazon-Advertising-API-MarketplaceId"),
        )
        instance_id = request.match_info.get("instance_id")
        if instance_id is not None:
            self.state.check_instance(account_id, instance_id)

    @web.middleware
    async def _faults(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Seeded faults, in order: slow, throttle, server error, malformed."""
        if not request.path.startswith("/amc/"):
            return await handler(request)

        faults, rng = self.state.faults, self.state.faults_rng
        counts = self.state.fault_counts
        creates = request.match_info.route.name == "create"
        if rng.random() < faults.slow_rate:
            counts["slow"] += 1
            await asyncio.sleep(faults.slow_by)

        if rng.random() < faults.throttle_rate:
            counts["throttle"] += 1
            return wire.throttled(rng, faults.retry_after)

        if rng.random() < faults.server_error_rate:
            counts["server_error"] += 1
            if creates and rng.random() < faults.after_create_share:
                await self._behind_fault(request, handler)

            return wire.server_error(rng)

        if rng.random() < faults.malformed_rate:
            counts["malformed"] += 1
            answer = None
            if not creates or rng.random() < faults.after_create_share:
                answer = await self._behind_fault(request, handler)

            return wire.malformed(rng, answer)

        return await handler(request)

    async def _behind_fault(
        self, request: web.Request, handler: Handler
    ) -> web.StreamResponse:
        """Do the work a faulty answer will hide; count a create that happened."""
        answer = await handler(request)
        if request.match_info.route.name == "create" and answer.status == 200:
            self.state.fault_counts["after_create"] += 1
            log.info("fault_hid_create", path=request.path)

        return answer

    # Login with Amazon

    async def _token(self, request: web.Request) -> web.StreamResponse:
        form = await request.post()
        options = self.options
        if (
            form.get("client_id") != options.client_id
            or form.get("client_secret") != options.client_secret
        ):
            log.info("token_refused", error="invalid_client")
            return _oauth_error(401, "invalid_client", "Client authentication failed")

        if (
            form.get("grant_type") != "refresh_token"
            or form.get("refresh_token") != options.refresh_token
        ):
            log.info("token_refused", error="invalid_grant")
            return _oauth_error(
                400,
                "invalid_grant",
                "The refresh token is invalid, or grant_type is not refresh_token",
            )

        return web.json_response(
            {
                "access_token": self.state.issue_token(),
                "token_type": "bearer",
                "expires_in": int(options.token_lifetime),
                "refresh_token": options.refresh_token,
            }
        )

    # The AMC API

    async def _accounts(self, request: web.Request) -> web.StreamResponse:
        accounts = [
            {
                "accountId": account_id,
                "accountName": f"Simulated account {account_id}",
                "marketplaceId": marketplace_id,
            }
            for account_id, marketplace_id in self.state.accounts()
        ]
        return web.json_response({"amcAccounts": accounts})

    async def _instances(self, request: web.Request) -> web.StreamResponse:
        origin = str(request.url.origin())
        advertiser = request.headers["Amazon-Advertising-API-AdvertiserId"]
        instances = [
            {
                "instanceId": instance_id,
                "instanceName": f"Simulated instance {instance_id}",
                "apiEndpoint": f"{origin}/amc/reporting/{instance_id}",
            }
            for instance_id in self.state.instances(advertiser)
        ]
        return web.json_response({"instances": instances})

    async def _create(self, request: web.Request) -> web.StreamResponse:
        instance_id = request.match_info["instance_id"]
        try:
            create = wire.parse_create(await wire.json_body(request))
        except Rejected as rejection:
            self.state.rejected["invalid"] += 1
            log.info(
                "create_refused", instance_id=instance_id, reason=rejection.details
            )
            return error(rejection.status, rejection.details)

        advertiser = request.headers["Amazon-Advertising-API-AdvertiserId"]
        try:
            execution = self.state.create(instance_id, advertiser, create)
        except Rejected as rejection:
            log.info(
                "create_rejected",
                instance_id=instance_id,
                kind=rejection.kind,
                status=rejection.status,
            )
            return error(rejection.status, rejection.details)

        log.info(
            "execution_created",
            instance_id=instance_id,
            execution_id=execution.id,
            workflow_id=execution.workflow_id,
            final_status=execution.final_status,
        )
        return web.json_response(wire.document(self.state, execution))

    async def _list(self, request: web.Request) -> web.StreamResponse:
        query = request.query
        try:
            found, cursor = self.state.page(
                request.match_info["instance_id"],
                min_created=wire.query_time(query, "minCreationTime"),
                max_created=wire.query_time(query, "maxCreationTime"),
                workflow_id=query.get("workflowId"),
                include_cancelled=wire.query_bool(query, "includeCancelled", False),
                ascending=wire.query_bool(query, "sortAscending", False),
                limit=wire.query_limit(query, self.options.page_size),
                after=wire.query_cursor(query),
            )
        except Rejected as rejection:
            return error(rejection.status, rejection.details)

        body: dict[str, Any] = {
            "executions": [wire.document(self.state, e) for e in found]
        }
        if cursor is not None:
            body["nextToken"] = wire.encode_cursor(cursor)

        return web.json_response(body)

    async def _get(self, request: web.Request) -> web.StreamResponse:
        try:
            include = wire.query_bool(request.query, "includeWorkflow", False)
            execution = self.state.get(
                request.match_info["instance_id"], request.match_info["execution_id"]
            )
        except Rejected as rejection:
            return error(rejection.status, rejection.details)

        return web.json_response(wire.document(self.state, execution, include))

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        instance_id = request.match_info["instance_id"]
        try:
            if request.method == "PUT":
                body = await wire.json_body(request)
                if not isinstance(body, dict) or body.get("status") != "CANCELLED":
                    raise wire.invalid(
                        'The only change allowed is {"status": "CANCELLED"}'
                    )

            execution = self.state.cancel(
                instance_id, request.match_info["execution_id"]
            )
        except Rejected as rejection:
            return error(rejection.status, rejection.details)

        log.info(
            "execution_cancelled", instance_id=instance_id, execution_id=execution.id
        )
        return web.json_response(wire.document(self.state, execution))

    async def _download_urls(self, request: web.Request) -> web.StreamResponse:
        execution_id = request.match_info["execution_id"]
        try:
            execution = self.state.get(request.match_info["instance_id"], execution_id)
        except Rejected as rejection:
            return error(rejection.status, rejection.details)

        if not self.state.results_ready(execution):
            return error(
                400, f"Execution with ID {execution_id} is unavailable for download"
            )

        origin = str(request.url.origin())
        urls = {}
        for key, name in (
            ("downloadUrls", f"{execution_id}.csv"),
            ("metadataDownloadUrls", f"{execution_id}_metadata.json"),
        ):
            token = self.state.sign_file(execution_id, name)
            urls[key] = [f"{origin}/sim/files/{token}/{name}"]

        return web.json_response(urls)

    async def _file(self, request: web.Request) -> web.StreamResponse:
        """A result file; like a pre-signed S3 URL, it needs no Authorization."""
        name = request.match_info["name"]
        try:
            execution = self.state.open_file(request.match_info["token"], name)
        except Rejected as rejection:
            return web.Response(text=rejection.details, status=rejection.status)

        if name.endswith(".csv"):
            return web.Response(
                text=wire.results_csv(execution), content_type="text/csv"
            )

        return web.json_response(wire.metadata(execution))

    # Inspection and control

    async def _stats(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.stats())

    async def _executions(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(self.executions())

    async def _ui_executions(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await request.json()
            ids = self.add_ui_executions(
                str(body["instance"]),
                int(body["count"]),
                float(body["duration"]),
                body.get("account"),
            )
        except Rejected as rejection:
            return error(rejection.status, rejection.details)
        except (ValueError, TypeError, KeyError, AttributeError):
            return error(400, "Expected {instance, count, duration[, account]}")

        return web.json_response({"ids": ids})

    async def _set_faults(self, request: web.Request) -> web.StreamResponse:
        try:
            self.set_faults(FaultOptions(**await request.json()))
        except (ValueError, TypeError) as exc:
            return error(400, f"Invalid faults: {exc}")

        return web.json_response(asdict(self.state.faults))


class SimulatorServer:
    """Serves a Simulator on ``host:port`` (port 0 picks a free port)."""

    def __init__(
        self, simulator: Simulator, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.simulator = simulator
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        """The AMC API base URL, once started."""
        if self._runner is None:
            raise RuntimeError("the simulator server is not started")

        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def token_url(self) -> str:
        return self.url + "/auth/o2/token"

    async def start(self) -> None:
        runner = web.AppRunner(self.simulator.app, access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError:
            await runner.cleanup()
            raise

        self._runner = runner
        self.port = int(runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> SimulatorServer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def serve(options: SimulatorOptions, host: str, port: int) -> None:
    """Serve a simulator until cancelled."""
    async with SimulatorServer(Simulator(options), host, port) as server:
        log.info(
            "simulator_started",
            host=host,
            port=server.port,
            url=server.url,
            speed=options.speed,
            seed=options.seed,
        )
        try:
            await asyncio.Event().wait()
        finally:
            log.info("simulator_stopped", host=host, port=server.port)
