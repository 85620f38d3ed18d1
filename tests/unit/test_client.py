"""The AMC client against scripted local servers, for faults a simulator can't make."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from scheduler import logs
from scheduler.amc.auth import Credentials, TokenProvider
from scheduler.amc.client import AccountRef, AmcClient, RetryPolicy, build_client
from scheduler.amc.errors import (
    AmcNotFound,
    AuthenticationFailed,
    InvalidRequest,
    LimitReached,
    PrivacyRejected,
    ResultsNotReady,
    Throttled,
    TransientError,
    classify,
    failure_is_retryable,
)

ACCOUNT = AccountRef("ENTITY1TEST", "ATVPDKIKX0DER")
CREDENTIALS = Credentials("client-id-1", "client-secret-xyz", "Atzr|refresh-xyz")
PRIVACY = (
    'Execution "e1" of workflow "w" could not be run because too many workflows'
    " have already been run against the same input data sources in the same or"
    " overlapping time windows."
)
FAST = RetryPolicy(attempts=3, base=0.01, cap=0.05, max_retry_after=1.0)

Reply = Callable[[web.Request], Awaitable[web.StreamResponse]] | tuple[int, Any]


def execution(id: str = "e1", status: str = "PENDING", **extra: Any) -> dict[str, Any]:
    return {"workflowExecutionId": id, "status": status, **extra}


@dataclass
class FakeAmc:
    """A scripted AMC: each route answers from its queue, then with its default."""

    scripts: dict[str, deque[Reply]] = field(default_factory=lambda: defaultdict(deque))
    requests: list[web.Request] = field(default_factory=list)
    bodies: list[Any] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    token_requests: int = 0
    token_lifetime: int = 3600
    token_delay: float = 0.0

    def script(self, route: str, *replies: Reply) -> None:
        self.scripts[route].extend(replies)

    def count(self, method: str) -> int:
        return sum(1 for r in self.requests if r.method == method)

    async def token(self, request: web.Request) -> web.Response:
        form = await request.post()
        assert form["grant_type"] == "refresh_token"
        self.token_requests += 1
        await asyncio.sleep(self.token_delay)
        if form["client_secret"] != CREDENTIALS.client_secret:
            return web.json_response({"error": "invalid_client"}, status=401)

        return web.json_response(
            {
                "access_token": f"Atza|token-{self.token_requests}",
                "token_type": "bearer",
                "expires_in": self.token_lifetime,
                "refresh_token": CREDENTIALS.refresh_token,
            }
        )

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append(request)
        self.times.append(time.monotonic())
        self.bodies.append(await request.json() if request.can_read_body else None)
        route = f"{request.method} {request.match_info['tail']}"
        queue = self.scripts[route]
        reply = queue.popleft() if queue else (200, execution())
        if callable(reply):
            return await reply(request)

        status, body = reply
        headers = {}
        if isinstance(body, dict) and "__headers__" in body:
            headers = body.pop("__headers__")

        if isinstance(body, str):
            return web.Response(status=status, text=body, headers=headers)

        return web.json_response(body, status=status, headers=headers)

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/auth/o2/token", self.token)
        app.router.add_route("*", "/amc/reporting/amc1/{tail:.*}", self.handle)
        return app


@pytest.fixture
async def fake() -> AsyncIterator[tuple[FakeAmc, str]]:
    amc = FakeAmc()
    server = TestServer(amc.app(), host="127.0.0.1")
    await server.start_server()
    yield amc, str(server.make_url("")).rstrip("/")
    await server.close()


@pytest.fixture
async def client(fake: tuple[FakeAmc, str]) -> AsyncIterator[AmcClient]:
    _, url = fake
    amc_client = build_client(
        api_url=url,
        token_url=f"{url}/auth/o2/token",
        credentials=CREDENTIALS,
        timeout=2.0,
        retry=FAST,
        requests_per_second=1000,
        burst=1000,
    )
    yield amc_client
    await amc_client.close()


BODY = {"workflowId": "w", "timeWindowType": "MOST_RECENT_DAY"}


async def test_every_call_carries_the_amc_headers(
    fake: tuple[FakeAmc, str], client: AmcClient, tmp_path: Path
) -> None:
    """Create, get, list, cancel and download URLs all send AMC's headers."""
    amc, _ = fake
    amc.script("GET workflowExecutions", (200, {"executions": []}))
    amc.script("GET workflowExecutions/e1/downloadUrls", (200, {"downloadUrls": []}))
    await client.create_execution(ACCOUNT, "amc1", BODY)
    await client.get_execution(ACCOUNT, "amc1", "e1")
    _ = [
        e
        async for e in client.list_executions(
            ACCOUNT, "amc1", min_creation_time=datetime.now(UTC)
        )
    ]
    await client.cancel_execution(ACCOUNT, "amc1", "e1")
    await client.download_urls(ACCOUNT, "amc1", "e1")
    assert [r.method for r in amc.requests] == ["POST", "GET", "GET", "PUT", "GET"]
    for request in amc.requests:
        assert request.headers["Authorization"] == "Bearer Atza|token-1"
        assert request.headers["Amazon-Advertising-API-ClientId"] == "client-id-1"
        assert request.headers["Amazon-Advertising-API-AdvertiserId"] == "ENTITY1TEST"
        assert (
            request.headers["Amazon-Advertising-API-MarketplaceId"] == "ATVPDKIKX0DER"
        )
        assert request.headers["Content-Type"] == "application/json"
        assert "application/json" in request.headers["Accept"]

    assert amc.bodies[0] == BODY
    assert amc.bodies[3] == {"status": "CANCELLED"}
    assert amc.token_requests == 1


async def test_flat_and_wrapped_answers_parse(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """The flat object of every sample and the OpenAPI wrapper both parse."""
    amc, _ = fake
    fields = execution(
        "e9",
        "FAILED",
        workflowId="w",
        createTime="2026-05-20T12:00:00.123Z",
        timeWindowStart="2026-05-19T04:00:00Z",
        timeWindowEnd="2026-05-20T04:00:00Z",
        timeWindowStartOriginal="2026-05-19T00:00:00",
        timeWindowTimeZoneOriginal="America/New_York",
        parameterValues={"k": "v"},
        workflowExecutionTimeoutSeconds=3600,
        errorReason="Internal failure",
    )
    amc.script("POST workflowExecutions", (200, fields))
    amc.script("GET workflowExecutions/e9", (200, {"workflowExecution": fields}))
    flat = await client.create_execution(ACCOUNT, "amc1", BODY)
    wrapped = await client.get_execution(ACCOUNT, "amc1", "e9")
    assert flat == wrapped
    assert flat.id == "e9"
    assert flat.terminal
    assert not flat.in_flight
    assert flat.reason == "Internal failure"
    assert flat.create_time == datetime(2026, 5, 20, 12, 0, 0, 123000, tzinfo=UTC)
    assert flat.window_start == datetime(2026, 5, 19, 4, tzinfo=UTC)
    assert flat.time_zone_original == "America/New_York"
    assert flat.parameter_values == {"k": "v"}
    assert flat.timeout_seconds == 3600


@pytest.mark.parametrize(
    ("field", "expected"),
    [("statusReason", "a"), ("errorReason", "b"), ("message", "c"), ("details", "d")],
)
def test_reason_fields_in_order(field: str, expected: str) -> None:
    """The failure reason is read from statusReason, errorReason, message, details."""
    from scheduler.amc.client import Execution

    order = ["statusReason", "errorReason", "message", "details"]
    present = dict(zip(order, "abcd", strict=True))
    start = order.index(field)
    document = execution(status="FAILED", **{k: present[k] for k in order[start:]})
    assert Execution.from_json(document).reason == expected


@pytest.mark.parametrize(
    "status", ["PUBLISHING", "PENDING", "RUNNING", "SOMETHING_NEW"]
)
def test_in_flight_statuses(status: str) -> None:
    """PUBLISHING and unknown statuses count as in flight (they may hold a slot)."""
    from scheduler.amc.client import Execution

    assert Execution.from_json(execution(status=status)).in_flight


@pytest.mark.parametrize("status", ["SUCCEEDED", "FAILED", "CANCELLED", "REJECTED"])
def test_terminal_statuses(status: str) -> None:
    """REJECTED is terminal like the documented three."""
    from scheduler.amc.client import Execution

    assert Execution.from_json(execution(status=status)).terminal


async def test_401_refreshes_once_and_repeats(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """A 401 costs one refresh and one repeat; a second 401 is an auth failure."""
    amc, _ = fake
    amc.script("POST workflowExecutions", (401, {"code": "401", "details": "expired"}))
    created = await client.create_execution(ACCOUNT, "amc1", BODY)
    assert created.id == "e1"
    assert amc.token_requests == 2
    assert amc.requests[-1].headers["Authorization"] == "Bearer Atza|token-2"

    amc.script(
        "GET workflowExecutions/e1",
        (401, {"code": "401", "details": "no"}),
        (401, {"code": "401", "details": "no"}),
    )
    with pytest.raises(AuthenticationFailed):
        await client.get_execution(ACCOUNT, "amc1", "e1")

    assert amc.token_requests == 3


async def test_403_expired_token_refreshes(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """A 403 that says the token expired is treated like a 401."""
    amc, _ = fake
    amc.script(
        "GET workflowExecutions/e1", (403, {"message": "The security token expired"})
    )
    assert (await client.get_execution(ACCOUNT, "amc1", "e1")).id == "e1"
    assert amc.token_requests == 2


async def test_403_forbidden_is_auth_failure(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """A plain 403 is not retried."""
    amc, _ = fake
    amc.script(
        "GET workflowExecutions/e1", (403, {"code": "403", "details": "Forbidden"})
    )
    with pytest.raises(AuthenticationFailed):
        await client.get_execution(ACCOUNT, "amc1", "e1")

    assert amc.count("GET") == 1


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (
            429,
            {"code": "429", "details": "Too many concurrent executions"},
            LimitReached,
        ),
        (
            400,
            {"details": "Exceeded maximum number of running executions"},
            LimitReached,
        ),
        (400, {"message": "Daily quota of ad hoc executions reached"}, LimitReached),
        (429, {"message": "Too Many Requests"}, Throttled),
        (429, "<html><body><h1>429 Too Many Requests</h1></body></html>", Throttled),
        (400, {"code": "400", "details": PRIVACY}, PrivacyRejected),
        (
            400,
            {"code": "400", "details": "SQL syntax error near SELEC"},
            InvalidRequest,
        ),
        (404, {"code": "404", "details": "not found"}, AmcNotFound),
        (415, {"message": "Unsupported Media Type"}, InvalidRequest),
        (410, {"message": "Gone"}, InvalidRequest),
    ],
)
async def test_create_errors_are_classified_and_not_repeated(
    fake: tuple[FakeAmc, str], client: AmcClient, status: int, body: Any, expected: type
) -> None:
    """Each kind of failed create maps to its decision class, with one request."""
    amc, _ = fake
    amc.script("POST workflowExecutions", (status, body))
    with pytest.raises(expected) as caught:
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert amc.count("POST") == 1
    assert caught.value.status == status


async def test_limit_error_carries_retry_after(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """Retry-After on a limit error reaches the dispatcher as retry_after."""
    amc, _ = fake
    body = {
        "details": "too many parallel executions",
        "__headers__": {"Retry-After": "42"},
    }
    amc.script("POST workflowExecutions", (429, body))
    with pytest.raises(LimitReached) as caught:
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert caught.value.retry_after == 42
    assert not caught.value.quota


async def test_validation_error_keeps_code_and_details(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """InvalidRequest keeps AMC's code and details for the run's history."""
    amc, _ = fake
    amc.script(
        "POST workflowExecutions",
        (400, {"code": "INVALID_SQL", "details": "bad column x"}),
    )
    with pytest.raises(InvalidRequest) as caught:
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert caught.value.code == "INVALID_SQL"
    assert caught.value.details == "bad column x"


async def test_5xx_on_create_is_ambiguous_and_not_repeated(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """A 5xx on create may have created it: ambiguous, and never retried here."""
    amc, _ = fake
    amc.script("POST workflowExecutions", (503, {"message": "Service Unavailable"}))
    with pytest.raises(TransientError) as caught:
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert caught.value.ambiguous
    assert amc.count("POST") == 1


async def test_reads_are_retried_on_5xx_and_malformed_bodies(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """get retries 5xx and unreadable answers, then succeeds."""
    amc, _ = fake
    amc.script(
        "GET workflowExecutions/e1",
        (502, "<html>Bad Gateway</html>"),
        (200, '{"workflowExecutionId": "e1", "sta'),
    )
    assert (await client.get_execution(ACCOUNT, "amc1", "e1")).id == "e1"
    assert amc.count("GET") == 3


async def test_reads_give_up_after_the_policy(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """Bounded: after the policy's attempts the transient error surfaces."""
    amc, _ = fake
    amc.script("GET workflowExecutions/e1", *[(500, {"message": "x"})] * 5)
    with pytest.raises(TransientError) as caught:
        await client.get_execution(ACCOUNT, "amc1", "e1")

    assert not caught.value.ambiguous
    assert amc.count("GET") == FAST.attempts


async def test_malformed_create_answer_is_ambiguous(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """A 200 whose body can't be read may still have created the execution."""
    amc, _ = fake
    amc.script("POST workflowExecutions", (200, "<html>oops</html>"))
    with pytest.raises(TransientError) as caught:
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert caught.value.ambiguous


async def test_timeout_on_create_is_ambiguous(fake: tuple[FakeAmc, str]) -> None:
    """A create that times out may have landed: ambiguous, one request."""
    amc, url = fake

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(5)
        return web.json_response(execution())

    amc.script("POST workflowExecutions", slow)
    client = build_client(
        api_url=url,
        token_url=f"{url}/auth/o2/token",
        credentials=CREDENTIALS,
        timeout=0.3,
        retry=FAST,
    )
    try:
        with pytest.raises(TransientError) as caught:
            await client.create_execution(ACCOUNT, "amc1", BODY)
    finally:
        await client.close()

    assert caught.value.ambiguous
    assert amc.count("POST") == 1


async def test_reset_connection_is_transient(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """The server dropping the connection mid-request is a transient error."""
    amc, _ = fake

    async def reset(request: web.Request) -> web.Response:
        assert request.transport is not None
        request.transport.abort()
        await asyncio.sleep(0.1)
        return web.json_response(execution())

    amc.script("POST workflowExecutions", reset)
    with pytest.raises(TransientError) as caught:
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert caught.value.ambiguous
    amc.script("GET workflowExecutions/e1", reset)
    assert (await client.get_execution(ACCOUNT, "amc1", "e1")).id == "e1"


async def test_refused_connection_is_not_ambiguous(fake: tuple[FakeAmc, str]) -> None:
    """Nothing listening: the create cannot have reached AMC."""
    _, url = fake
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]

    client = build_client(
        api_url=f"http://127.0.0.1:{port}",
        token_url=f"{url}/auth/o2/token",
        credentials=CREDENTIALS,
        retry=FAST,
    )
    try:
        with pytest.raises(TransientError) as caught:
            await client.create_execution(ACCOUNT, "amc1", BODY)
    finally:
        await client.close()

    assert not caught.value.ambiguous


async def test_throttled_read_honours_retry_after(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """A 429 with Retry-After holds the next request at least that long."""
    amc, _ = fake
    throttle = {"message": "Too Many Requests", "__headers__": {"Retry-After": "0.3"}}
    amc.script("GET workflowExecutions/e1", (429, throttle))
    assert (await client.get_execution(ACCOUNT, "amc1", "e1")).id == "e1"
    assert amc.count("GET") == 2
    assert amc.times[1] - amc.times[0] >= 0.3


async def test_concurrent_callers_share_one_refresh(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """Twenty calls at once, no token yet: exactly one token request."""
    amc, _ = fake
    amc.token_delay = 0.1
    results = await asyncio.gather(
        *(client.get_execution(ACCOUNT, "amc1", "e1") for _ in range(20))
    )
    assert len(results) == 20
    assert amc.token_requests == 1


async def test_token_is_refreshed_ahead_of_expiry(fake: tuple[FakeAmc, str]) -> None:
    """A token is reused until 60 s before it expires, then refreshed."""
    amc, url = fake
    now = [1000.0]
    from scheduler.amc.client import new_session

    session = new_session(2.0, 4)
    tokens = TokenProvider(
        session, f"{url}/auth/o2/token", CREDENTIALS, clock=lambda: now[0]
    )
    try:
        first = await tokens.token()
        now[0] += 3600 - 61
        assert await tokens.token() == first
        now[0] += 2
        assert await tokens.token() != first
    finally:
        await session.close()

    assert amc.token_requests == 2


async def test_refused_token_names_no_secret(fake: tuple[FakeAmc, str]) -> None:
    """A refused refresh is AuthenticationFailed and no log line holds a secret."""
    _, url = fake
    stream = io.StringIO()
    logs.configure(level="debug", fmt="json", stream=stream)
    wrong = Credentials("client-id-1", "wrong-secret-value", "Atzr|refresh-xyz")
    client = build_client(
        api_url=url, token_url=f"{url}/auth/o2/token", credentials=wrong, retry=FAST
    )
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await client.get_execution(ACCOUNT, "amc1", "e1")
    finally:
        await client.close()
        logs.configure(level="debug", fmt="json")

    text = stream.getvalue() + str(caught.value) + repr(caught.value)
    for secret in ("wrong-secret-value", "Atzr|refresh-xyz"):
        assert secret not in text


async def test_list_follows_next_token(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """list pages through nextToken and stops when it is gone or repeats."""
    amc, _ = fake
    amc.script(
        "GET workflowExecutions",
        (200, {"executions": [execution("a"), execution("b")], "nextToken": "t1"}),
        (200, {"executions": [execution("c")], "nextToken": "t2"}),
        (200, {"executions": [execution("d")]}),
    )
    since = datetime(2026, 5, 20, 1, 2, 3, tzinfo=UTC)
    found = [
        e.id
        async for e in client.list_executions(
            ACCOUNT, "amc1", min_creation_time=since, workflow_id="w", page_size=2
        )
    ]
    assert found == ["a", "b", "c", "d"]
    first, second, third = (r.query for r in amc.requests)
    assert first["minCreationTime"] == "2026-05-20T01:02:03"
    assert first["workflowId"] == "w"
    assert first["limit"] == "2"
    assert "nextToken" not in first
    assert second["nextToken"] == "t1"
    assert third["nextToken"] == "t2"

    amc.script(
        "GET workflowExecutions",
        (200, {"executions": [execution("x")], "nextToken": "loop"}),
        (200, {"executions": [execution("y")], "nextToken": "loop"}),
    )
    again = [
        e.id
        async for e in client.list_executions(ACCOUNT, "amc1", min_creation_time=since)
    ]
    assert again == ["x", "y"]


async def test_cancel_of_terminal_execution_returns_none(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """AMC answers 400 once terminal; cancel says None rather than raising."""
    amc, _ = fake
    amc.script("PUT workflowExecutions/e1", (400, {"details": "already SUCCEEDED"}))
    assert await client.cancel_execution(ACCOUNT, "amc1", "e1") is None


async def test_download_urls_not_ready(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """Before the results exist AMC says so; that is ResultsNotReady."""
    amc, _ = fake
    amc.script(
        "GET workflowExecutions/e1/downloadUrls",
        (400, {"details": "Execution with ID e1 is unavailable for download"}),
    )
    with pytest.raises(ResultsNotReady):
        await client.download_urls(ACCOUNT, "amc1", "e1")


async def test_download_writes_whole_files(
    fake: tuple[FakeAmc, str], client: AmcClient, tmp_path: Path
) -> None:
    """A download lands whole under its name; an expired URL is not retried."""
    amc, url = fake
    amc.script("GET files/data.csv", (200, "a,b\n1,2\n"))
    amc.script("GET files/expired.csv", (403, "<Error>Request has expired</Error>"))
    target = tmp_path / "data.csv"
    size = await client.download(f"{url}/amc/reporting/amc1/files/data.csv", target)
    assert target.read_text() == "a,b\n1,2\n"
    assert size == 8
    download = amc.requests[-1]
    assert "Authorization" not in download.headers

    with pytest.raises(TransientError):
        await client.download(
            f"{url}/amc/reporting/amc1/files/expired.csv", tmp_path / "x"
        )

    assert not (tmp_path / "x").exists()
    assert not (tmp_path / "x.part").exists()
    assert sum(1 for r in amc.requests if r.path.endswith("expired.csv")) == 1


async def test_observer_sees_every_call_outcome(
    fake: tuple[FakeAmc, str], client: AmcClient
) -> None:
    """Each request attempt is reported with its call name and outcome."""
    amc, _ = fake
    seen: list[tuple[str, str]] = []
    client.observer = lambda call, outcome, seconds: seen.append((call, outcome))
    amc.script("GET workflowExecutions/e1", (500, {"message": "x"}))
    amc.script(
        "POST workflowExecutions", (429, {"details": "too many concurrent executions"})
    )
    await client.get_execution(ACCOUNT, "amc1", "e1")
    with pytest.raises(LimitReached):
        await client.create_execution(ACCOUNT, "amc1", BODY)

    assert seen == [("get", "transient"), ("get", "ok"), ("create", "limit")]


def test_classification_helpers() -> None:
    """classify maps the documented statuses; retryable reasons are sorted out."""
    assert isinstance(classify(503, "", call="get"), TransientError)
    create_error = classify(503, "", call="create", is_create=True)
    assert isinstance(create_error, TransientError)
    assert create_error.ambiguous
    assert not failure_is_retryable(PRIVACY)
    assert not failure_is_retryable("Invalid SQL: column foo does not exist")
    assert failure_is_retryable("Internal error: the execution failed unexpectedly")
    assert failure_is_retryable(None)


async def test_pacing_limits_the_request_rate(fake: tuple[FakeAmc, str]) -> None:
    """With a bucket of 2 at 10/s, ten calls take at least 0.8 s."""
    amc, url = fake
    client = build_client(
        api_url=url,
        token_url=f"{url}/auth/o2/token",
        credentials=CREDENTIALS,
        retry=FAST,
        requests_per_second=10,
        burst=2,
    )
    try:
        await asyncio.gather(
            *(client.get_execution(ACCOUNT, "amc1", "e1") for _ in range(10))
        )
    finally:
        await client.close()

    assert amc.times[-1] - amc.times[0] >= 0.7
    assert json.dumps(amc.bodies)  # every request was readable
