"""The AMC simulator over real HTTP, with a fake clock driving the executions."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import pytest
from structlog.testing import capture_logs

from scheduler.amc.simulator import (
    AccountSpec,
    FaultOptions,
    Simulator,
    SimulatorOptions,
    SimulatorServer,
    options_from_settings,
    serve,
)
from scheduler.config import (
    AccountSettings,
    FaultSettings,
    InstanceSettings,
    SimulatorSettings,
)

INSTANCE = "amc1"
ACCOUNT = "ENTITY1"
MARKETPLACE = "ATVPDKIKX0DER"
ACCOUNT_HEADER = "Amazon-Advertising-API-AdvertiserId"
WINDOW = {
    "timeWindowType": "EXPLICIT",
    "timeWindowStart": "2026-05-01T00:00:00",
    "timeWindowEnd": "2026-05-02T00:00:00",
}
SAVED = {"workflowId": "daily_report", **WINDOW}
PRIVACY_WORDS = "too many workflows have already been run against the same input"


class FakeClock:
    """A clock that moves only when a test moves it."""

    def __init__(self) -> None:
        self.value = 1000.0

    def __call__(self) -> float:
        return self.value

    def advance(self, seconds: float) -> None:
        self.value += seconds


@dataclass
class Amc:
    """A served simulator and a session holding a valid access token."""

    simulator: Simulator
    server: SimulatorServer
    session: aiohttp.ClientSession
    token: str

    def headers(self, **changes: str | None) -> dict[str, str]:
        headers: dict[str, str | None] = {
            "Authorization": f"Bearer {self.token}",
            "Amazon-Advertising-API-ClientId": self.simulator.options.client_id,
            "Amazon-Advertising-API-AdvertiserId": ACCOUNT,
            "Amazon-Advertising-API-MarketplaceId": MARKETPLACE,
        }
        headers.update(changes)
        return {key: value for key, value in headers.items() if value is not None}

    async def call(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        """Status and parsed body (text when the body is not JSON)."""
        async with self.session.request(
            method,
            self.server.url + path,
            json=json_body,
            params=params,
            headers=self.headers() if headers is None else headers,
        ) as response:
            text = await response.text()
            try:
                return response.status, json.loads(text)
            except ValueError:
                return response.status, text

    async def create(
        self, body: dict[str, Any] | None = None, instance: str = INSTANCE
    ) -> tuple[int, Any]:
        path = f"/amc/reporting/{instance}/workflowExecutions"
        return await self.call("POST", path, json_body=SAVED if body is None else body)

    async def execution(self, execution_id: str, **params: str) -> tuple[int, Any]:
        path = f"/amc/reporting/{INSTANCE}/workflowExecutions/{execution_id}"
        return await self.call("GET", path, params=params)

    async def listing(self, **params: str) -> tuple[int, Any]:
        path = f"/amc/reporting/{INSTANCE}/workflowExecutions"
        return await self.call("GET", path, params=params)


Start = Callable[..., Awaitable[Amc]]


async def fetch_token(
    session: aiohttp.ClientSession, server: SimulatorServer, **changes: str
) -> tuple[int, Any]:
    options = server.simulator.options
    form = {
        "grant_type": "refresh_token",
        "refresh_token": options.refresh_token,
        "client_id": options.client_id,
        "client_secret": options.client_secret,
        **changes,
    }
    async with session.post(server.token_url, data=form) as response:
        return response.status, await response.json()


@pytest.fixture
def clock() -> FakeClock:
    """The simulator's clock, moved by hand."""
    return FakeClock()


@pytest.fixture
async def start(clock: FakeClock) -> AsyncIterator[Start]:
    """Starts a simulator with the given options (run times exact by default)."""
    async with AsyncExitStack() as stack:

        async def make(**overrides: Any) -> Amc:
            options = SimulatorOptions(**{"duration_sigma": 0.0, **overrides})
            simulator = Simulator(options, clock=clock)
            server = await stack.enter_async_context(SimulatorServer(simulator))
            session = await stack.enter_async_context(aiohttp.ClientSession())
            status, body = await fetch_token(session, server)
            assert status == 200
            return Amc(simulator, server, session, body["access_token"])

        yield make


@pytest.fixture
async def amc(start: Start) -> Amc:
    """A simulator with default options."""
    return await start()


# Login with Amazon


async def test_token_endpoint_issues_a_bearer_token(amc: Amc) -> None:
    """The right credentials get an Atza| token, its lifetime and the refresh token."""
    status, body = await fetch_token(amc.session, amc.server)
    assert status == 200
    assert body["access_token"].startswith("Atza|")
    assert body["token_type"] == "bearer"
    assert body["expires_in"] == 3600
    assert body["refresh_token"] == amc.simulator.options.refresh_token
    assert amc.simulator.stats()["requests"]["token"] == 2


@pytest.mark.parametrize(
    ("changes", "status", "code"),
    [
        ({"client_id": "someone-else"}, 401, "invalid_client"),
        ({"client_secret": "wrong"}, 401, "invalid_client"),
        ({"refresh_token": "Atzr|stale"}, 400, "invalid_grant"),
        ({"grant_type": "client_credentials"}, 400, "invalid_grant"),
    ],
)
async def test_token_endpoint_refuses_bad_credentials(
    amc: Amc, changes: dict[str, str], status: int, code: str
) -> None:
    """A wrong client is 401 invalid_client; a wrong grant is 400 invalid_grant."""
    answer, body = await fetch_token(amc.session, amc.server, **changes)
    assert (answer, body["error"]) == (status, code)
    assert body["error_description"]


async def test_access_token_expires_after_its_lifetime(
    start: Start, clock: FakeClock
) -> None:
    """A token is accepted until token_lifetime real seconds pass, then 401."""
    amc = await start(token_lifetime=60.0)
    clock.advance(59)
    assert (await amc.listing())[0] == 200
    clock.advance(1)
    status, body = await amc.listing()
    assert status == 401
    assert body == {
        "code": "401",
        "details": "Unauthorized: the access token is invalid or expired",
    }


# Header checks


@pytest.mark.parametrize(
    ("changes", "status"),
    [
        ({"Authorization": None}, 401),
        ({"Authorization": "Bearer Atza|made-up"}, 401),
        ({"Authorization": "Basic abc"}, 401),
        ({"Amazon-Advertising-API-ClientId": None}, 403),
        ({"Amazon-Advertising-API-ClientId": "other-client"}, 403),
        ({"Amazon-Advertising-API-AdvertiserId": None}, 400),
        ({"Amazon-Advertising-API-MarketplaceId": None}, 400),
    ],
)
async def test_header_checks_refuse_creates(
    amc: Amc, changes: dict[str, str | None], status: int
) -> None:
    """Token, client id, advertiser and marketplace are checked; nothing is created."""
    answer, body = await amc.call(
        "POST",
        f"/amc/reporting/{INSTANCE}/workflowExecutions",
        json_body=SAVED,
        headers=amc.headers(**changes),
    )
    assert answer == status
    assert body["code"] == str(status)
    stats = amc.simulator.stats()
    assert stats["rejected_creates"]["auth"] == 1
    assert stats["executions"]["total"] == 0


@pytest.mark.parametrize(
    ("changes", "instance", "status"),
    [
        ({"Amazon-Advertising-API-AdvertiserId": "ENTITY9"}, INSTANCE, 403),
        ({"Amazon-Advertising-API-MarketplaceId": "A1F83G8C2ARO7P"}, INSTANCE, 400),
        ({}, "amc-elsewhere", 404),
    ],
)
async def test_configured_accounts_are_enforced(
    start: Start, changes: dict[str, str], instance: str, status: int
) -> None:
    """With accounts configured, unknown accounts, marketplaces and instances fail."""
    amc = await start(
        accounts={
            ACCOUNT: AccountSpec(MARKETPLACE, instances={INSTANCE: 10}),
            "ENTITY2": AccountSpec(MARKETPLACE, instances={"amc-elsewhere": 10}),
        }
    )
    answer, _ = await amc.call(
        "POST",
        f"/amc/reporting/{instance}/workflowExecutions",
        json_body=SAVED,
        headers=amc.headers(**changes),
    )
    assert answer == status
    assert (await amc.create())[0] == 200


async def test_accounts_and_instances_are_listed(start: Start) -> None:
    """/amc/accounts lists configured accounts; /amc/instances the advertiser's."""
    amc = await start(
        accounts={ACCOUNT: AccountSpec(MARKETPLACE, instances={"amc1": 5, "amc2": 3})}
    )
    status, accounts = await amc.call(
        "GET", "/amc/accounts", headers=amc.headers(**{ACCOUNT_HEADER: None})
    )
    assert status == 200
    assert accounts["amcAccounts"] == [
        {
            "accountId": ACCOUNT,
            "accountName": f"Simulated account {ACCOUNT}",
            "marketplaceId": MARKETPLACE,
        }
    ]
    status, instances = await amc.call("GET", "/amc/instances")
    assert status == 200
    assert [i["instanceId"] for i in instances["instances"]] == ["amc1", "amc2"]
    assert instances["instances"][0]["apiEndpoint"].endswith("/amc/reporting/amc1")
    assert (await amc.call("GET", "/amc/accounts", headers={}))[0] == 401


async def test_unknown_paths_and_content_types_answer_in_amc_shape(amc: Amc) -> None:
    """Unknown /amc/ paths are a JSON 404; a body that is not JSON is 415."""
    status, body = await amc.call("GET", "/amc/reporting/amc1/workflows")
    assert (status, body["code"]) == (404, "404")
    async with amc.session.post(
        amc.server.url + f"/amc/reporting/{INSTANCE}/workflowExecutions",
        data="workflowId=x",
        headers={**amc.headers(), "Content-Type": "text/plain"},
    ) as response:
        assert response.status == 415

    async with amc.session.post(
        amc.server.url + f"/amc/reporting/{INSTANCE}/workflowExecutions",
        data=json.dumps(SAVED),
        headers={
            **amc.headers(),
            "Content-Type": "application/vnd.amcworkflowexecutions.v1+json",
        },
    ) as response:
        assert response.status == 200


# Creating executions


@pytest.mark.parametrize(
    "body",
    [
        {"workflowId": "w", "workflow": {"sqlQuery": "SELECT 1"}},
        {"timeWindowType": "MOST_RECENT_DAY"},
        {"workflow": {"workflowId": "only-an-id"}},
        {"workflowId": "  "},
        {"workflowId": "w", "timeWindowType": "YESTERDAY"},
        {**SAVED, "timeWindowEnd": None},
        {**SAVED, "timeWindowStart": "2026-05-01T00:00:00Z"},
        {**SAVED, "timeWindowStart": "2026-05-01T00:00:00.000"},
        {**SAVED, "timeWindowStart": "2026-05-01"},
        {**SAVED, "timeWindowStart": "2026-13-01T00:00:00"},
        {**SAVED, "timeWindowStart": "2026-05-02T00:00:00"},
        {**SAVED, "timeWindowStart": "2026-05-03T00:00:00"},
        {"workflowId": "w", "timeWindowStart": "2026-05-01T00:00:00"},
        {**SAVED, "timeWindowTimeZone": "Mars/Olympus"},
        {**SAVED, "parameterValues": ["a"]},
        {**SAVED, "workflowExecutionTimeoutSeconds": 0},
        {**SAVED, "workflowExecutionTimeoutSeconds": "60"},
        ["not", "an", "object"],
    ],
)
async def test_invalid_create_bodies_are_400(amc: Amc, body: Any) -> None:
    """Bad workflow fields, windows, zones and options give 400 and create nothing."""
    status, answer = await amc.create(body)
    assert status == 400
    assert answer["code"] == "400"
    assert answer["details"]
    stats = amc.simulator.stats()
    assert stats["rejected_creates"]["invalid"] == 1
    assert stats["executions"]["total"] == 0


async def test_create_answers_the_flat_execution_object(amc: Amc) -> None:
    """The answer is flat, with UTC-normalised window, originals and defaults."""
    body = {
        **SAVED,
        "timeWindowTimeZone": "America/New_York",
        "parameterValues": {"campaign": "c1"},
        "dryRun": False,
        "ignoreDataGaps": True,
        "somethingNew": 1,
    }
    before = datetime.now(UTC) - timedelta(seconds=1)
    status, execution = await amc.create(body)
    assert status == 200
    assert execution["workflowExecutionId"].startswith("sim-")
    assert execution["workflowId"] == "daily_report"
    assert execution["status"] == "PENDING"
    assert execution["executionCategory"] == "SAVED"
    assert execution["timeWindowStart"] == "2026-05-01T04:00:00Z"
    assert execution["timeWindowEnd"] == "2026-05-02T04:00:00Z"
    assert execution["timeWindowStartOriginal"] == "2026-05-01T00:00:00"
    assert execution["timeWindowEndOriginal"] == "2026-05-02T00:00:00"
    assert execution["timeWindowTimeZoneOriginal"] == "America/New_York"
    assert execution["parameterValues"] == {"campaign": "c1"}
    assert execution["workflowExecutionTimeoutSeconds"] == 21600
    assert (execution["dryRun"], execution["ignoreDataGaps"]) == (False, True)
    assert "somethingNew" not in execution
    assert "statusReason" not in execution
    assert execution["outputS3URI"].startswith("s3://")
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", execution["createTime"]
    )
    created = datetime.strptime(execution["createTime"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert before <= created.replace(tzinfo=UTC) <= before + timedelta(seconds=5)


async def test_adhoc_create_is_adhoc_with_a_generated_workflow_id(amc: Amc) -> None:
    """Ad hoc SQL runs as ADHOC, under its given workflowId or a generated one."""
    status, generated = await amc.create({"workflow": {"sqlQuery": "SELECT 1"}})
    assert status == 200
    assert generated["executionCategory"] == "ADHOC"
    assert generated["workflowId"].startswith("adhoc-")
    assert generated["timeWindowType"] == "MOST_RECENT_DAY"
    assert generated["timeWindowStart"].endswith("T00:00:00Z")
    _, named = await amc.create(
        {"workflow": {"sqlQuery": "SELECT 2", "workflowId": "q"}}
    )
    assert (named["workflowId"], named["executionCategory"]) == ("q", "ADHOC")


async def test_lifecycle_follows_the_clock(start: Start, clock: FakeClock) -> None:
    """PENDING, then RUNNING after pending_share of the run, then SUCCEEDED."""
    # 1200 simulated seconds at speed 60: 20 real seconds, the first 1 PENDING.
    amc = await start(speed=60.0, duration=1200.0, pending_share=0.05)
    _, created = await amc.create()
    execution_id = created["workflowExecutionId"]
    statuses = []
    for step in (0.9, 0.2, 18.8, 0.2):
        clock.advance(step)
        statuses.append((await amc.execution(execution_id))[1]["status"])

    assert statuses == ["PENDING", "RUNNING", "RUNNING", "SUCCEEDED"]
    _, done = await amc.execution(execution_id)
    assert done["lastUpdatedTime"] > done["createTime"]
    (timeline,) = amc.simulator.executions()
    assert timeline["ended_at"] - timeline["created_at"] == pytest.approx(20.0)
    assert timeline["started_at"] - timeline["created_at"] == pytest.approx(1.0)


async def test_workflow_durations_override_the_default(
    start: Start, clock: FakeClock
) -> None:
    """A workflow's own median run time replaces the default duration."""
    amc = await start(duration=1200.0, workflow_durations={"quick": 60.0})
    await amc.create({"workflowId": "quick"})
    await amc.create()
    clock.advance(1.5)
    statuses = {e["workflow_id"]: e["status"] for e in amc.simulator.executions()}
    assert statuses == {"quick": "SUCCEEDED", "daily_report": "RUNNING"}


async def test_failure_rate_one_fails_with_a_retryable_reason(
    start: Start, clock: FakeClock
) -> None:
    """failure_rate=1 ends every execution FAILED with an internal-error reason."""
    amc = await start(failure_rate=1.0)
    _, created = await amc.create()
    clock.advance(21)
    _, execution = await amc.execution(created["workflowExecutionId"])
    assert execution["status"] == "FAILED"
    assert execution["statusReason"].startswith("Internal error")


async def test_timeout_shorter_than_the_run_fails_at_the_timeout(
    amc: Amc, clock: FakeClock
) -> None:
    """workflowExecutionTimeoutSeconds below the run time fails it at the timeout."""
    _, created = await amc.create({**SAVED, "workflowExecutionTimeoutSeconds": 120})
    clock.advance(1.9)
    assert (await amc.execution(created["workflowExecutionId"]))[1]["status"] in (
        "PENDING",
        "RUNNING",
    )
    clock.advance(0.2)
    _, execution = await amc.execution(created["workflowExecutionId"])
    assert execution["status"] == "FAILED"
    assert "timed out" in execution["statusReason"]


# Parallel limits


async def test_instance_limit_refuses_and_creates_nothing(
    start: Start, clock: FakeClock
) -> None:
    """At the instance limit a create is 429 with a limit message; a slot frees."""
    amc = await start(instance_limit=2)
    assert [(await amc.create())[0] for _ in range(2)] == [200, 200]
    status, body = await amc.create()
    assert status == 429
    assert body == {
        "code": "429",
        "details": "Too many concurrent executions: the instance already has"
        " 2 executions running in parallel (limit 2)",
    }
    assert len((await amc.listing())[1]["executions"]) == 2
    assert amc.simulator.stats()["rejected_creates"]["limit"] == 1
    clock.advance(20)
    assert (await amc.create())[0] == 200


async def test_account_limit_counts_every_instance(start: Start) -> None:
    """The account limit spans instances and is reported with account wording."""
    amc = await start(account_limit=3)
    for instance in ("amc1", "amc2", "amc3"):
        assert (await amc.create(instance=instance))[0] == 200

    status, body = await amc.create(instance="amc4")
    assert status == 429
    assert "the account already has 3 executions" in body["details"]
    assert amc.simulator.stats()["executions"]["total"] == 3


async def test_ui_executions_take_slots(start: Start, clock: FakeClock) -> None:
    """Executions started from the UI count against the instance limit."""
    amc = await start(instance_limit=2)
    ids = amc.simulator.add_ui_executions(INSTANCE, 1, duration=600.0)
    status, added = await amc.call(
        "POST",
        "/sim/ui-executions",
        json_body={"instance": "amc2", "count": 2, "duration": 600},
        headers={},
    )
    assert status == 200
    assert len(added["ids"]) == 2
    assert (await amc.create())[0] == 200
    assert (await amc.create())[0] == 429
    listed = [e["workflowExecutionId"] for e in (await amc.listing())[1]["executions"]]
    assert ids[0] in listed
    clock.advance(10)
    assert (await amc.create())[0] == 200


async def test_limit_status_can_be_400(start: Start) -> None:
    """limit_status=400 answers an over-limit create 400, still with limit words."""
    amc = await start(instance_limit=1, limit_status=400)
    await amc.create()
    status, body = await amc.create()
    assert status == 400
    assert body["code"] == "400"
    assert "running in parallel (limit 1)" in body["details"]


# Privacy


async def test_privacy_rejection_on_create(start: Start) -> None:
    """Past privacy_repeats runs of one window, a create is 400 with the message."""
    amc = await start(privacy_repeats=2)
    for _ in range(2):
        assert (await amc.create())[0] == 200

    status, body = await amc.create()
    assert status == 400
    assert re.fullmatch(
        r'Execution "sim-[0-9a-f]+" of workflow "daily_report" could not be run'
        r" because too many workflows have already been run against the same input"
        r" data sources in the same or overlapping time windows\.",
        body["details"],
    )
    other_window = {**SAVED, "timeWindowEnd": "2026-05-03T00:00:00"}
    assert (await amc.create(other_window))[0] == 200
    stats = amc.simulator.stats()
    assert stats["rejected_creates"]["privacy"] == 1
    assert stats["executions"]["total"] == 3


async def test_privacy_rejection_as_a_failed_execution(
    start: Start, clock: FakeClock
) -> None:
    """In "status" mode the create succeeds and the execution soon FAILS with it."""
    amc = await start(privacy_repeats=1, privacy_mode="status")
    await amc.create()
    status, created = await amc.create()
    assert (status, created["status"]) == (200, "PENDING")
    clock.advance(1)
    _, execution = await amc.execution(created["workflowExecutionId"])
    assert execution["status"] == "FAILED"
    assert PRIVACY_WORDS in execution["statusReason"]
    assert created["workflowExecutionId"] in execution["statusReason"]


async def test_cancelled_executions_do_not_spend_privacy(start: Start) -> None:
    """A cancelled execution leaves the window's privacy budget untouched."""
    amc = await start(privacy_repeats=1)
    _, created = await amc.create()
    path = f"/amc/reporting/{INSTANCE}/workflowExecutions/"
    await amc.call(
        "PUT", path + created["workflowExecutionId"], json_body={"status": "CANCELLED"}
    )
    assert (await amc.create())[0] == 200
    assert (await amc.create())[0] == 400


# Listing and reading


async def test_list_pages_newest_first_with_next_tokens(
    start: Start, clock: FakeClock
) -> None:
    """Pages of page_size follow nextToken to the end; the last page has none."""
    amc = await start(page_size=2, privacy_repeats=100)
    created = []
    for _ in range(7):
        created.append((await amc.create())[1]["workflowExecutionId"])
        clock.advance(1.1)

    await amc.create(instance="amc2")
    seen: list[str] = []
    pages = 0
    token: str | None = None
    while True:
        params = {} if token is None else {"nextToken": token}
        status, page = await amc.listing(**params)
        assert status == 200
        pages += 1
        seen.extend(e["workflowExecutionId"] for e in page["executions"])
        token = page.get("nextToken")
        if token is None:
            break

    assert pages == 4
    assert seen == list(reversed(created))
    _, ascending = await amc.listing(sortAscending="true", limit="5")
    assert [e["workflowExecutionId"] for e in ascending["executions"]] == created[:5]
    assert "nextToken" in ascending


async def test_list_filters_by_workflow_time_and_cancellation(
    amc: Amc, clock: FakeClock
) -> None:
    """workflowId, creation-time bounds and includeCancelled narrow the list."""
    _, first = await amc.create()
    clock.advance(5)
    _, second = await amc.create({**SAVED, "workflowId": "weekly"})
    clock.advance(5)
    _, third = await amc.create()
    path = f"/amc/reporting/{INSTANCE}/workflowExecutions/"
    await amc.call(
        "PUT", path + third["workflowExecutionId"], json_body={"status": "CANCELLED"}
    )

    def ids(page: Any) -> list[str]:
        return [e["workflowExecutionId"] for e in page["executions"]]

    _, default = await amc.listing()
    assert ids(default) == [second["workflowExecutionId"], first["workflowExecutionId"]]
    _, everything = await amc.listing(includeCancelled="true")
    assert len(ids(everything)) == 3
    _, weekly = await amc.listing(workflowId="weekly")
    assert ids(weekly) == [second["workflowExecutionId"]]
    since = second["createTime"][:19]
    _, recent = await amc.listing(minCreationTime=since, includeCancelled="true")
    assert ids(recent) == [third["workflowExecutionId"], second["workflowExecutionId"]]
    _, early = await amc.listing(maxCreationTime=since)
    assert ids(early) == [second["workflowExecutionId"], first["workflowExecutionId"]]


@pytest.mark.parametrize(
    "params",
    [
        {"minCreationTime": "2026-05-01T00:00:00Z"},
        {"maxCreationTime": "2026-05-01"},
        {"includeCancelled": "yes"},
        {"limit": "0"},
        {"nextToken": "not-a-token"},
    ],
)
async def test_bad_list_parameters_are_400(amc: Amc, params: dict[str, str]) -> None:
    """Times not in yyyy-MM-ddTHH:mm:ss, bad flags, limits or tokens give 400."""
    status, body = await amc.listing(**params)
    assert (status, body["code"]) == (400, "400")


async def test_get_with_include_workflow_adds_the_sql(amc: Amc) -> None:
    """includeWorkflow=true adds the SQL; unknown ids are 404 with the id."""
    _, adhoc = await amc.create({"workflow": {"sqlQuery": "SELECT 7"}})
    _, saved = await amc.create()
    _, plain = await amc.execution(adhoc["workflowExecutionId"])
    assert "workflow" not in plain
    _, with_sql = await amc.execution(
        adhoc["workflowExecutionId"], includeWorkflow="true"
    )
    assert with_sql["workflow"]["sqlQuery"] == "SELECT 7"
    _, saved_sql = await amc.execution(
        saved["workflowExecutionId"], includeWorkflow="true"
    )
    assert saved_sql["workflow"]["sqlQuery"].startswith("SELECT")
    status, missing = await amc.execution("sim-nope")
    assert (status, missing) == (
        404,
        {"code": "404", "details": "Execution sim-nope not found"},
    )


async def test_cancel_then_cancel_again(start: Start) -> None:
    """PUT CANCELLED cancels and frees the slot; a second cancel is 400."""
    amc = await start(instance_limit=1)
    _, created = await amc.create()
    path = (
        f"/amc/reporting/{INSTANCE}/workflowExecutions/{created['workflowExecutionId']}"
    )
    status, _ = await amc.call("PUT", path, json_body={"status": "RUNNING"})
    assert status == 400
    status, cancelled = await amc.call("PUT", path, json_body={"status": "CANCELLED"})
    assert (status, cancelled["status"]) == (200, "CANCELLED")
    status, again = await amc.call("PUT", path, json_body={"status": "CANCELLED"})
    assert (status, again["code"]) == (400, "400")
    _, other = await amc.create({**SAVED, "workflowId": "other"})
    status, deleted = await amc.call(
        "DELETE",
        path.replace(created["workflowExecutionId"], other["workflowExecutionId"]),
    )
    assert (status, deleted["status"]) == (200, "CANCELLED")
    assert amc.simulator.stats()["requests"]["cancel"] == 4


# Results


async def test_download_urls_appear_after_the_results_delay(
    amc: Amc, clock: FakeClock
) -> None:
    """Before SUCCEEDED plus results_delay: 400; after: signed URLs that expire."""
    _, created = await amc.create()
    execution_id = created["workflowExecutionId"]
    path = f"/amc/reporting/{INSTANCE}/workflowExecutions/{execution_id}/downloadUrls"
    status, early = await amc.call("GET", path)
    assert (status, early["details"]) == (
        400,
        f"Execution with ID {execution_id} is unavailable for download",
    )
    clock.advance(20.1)
    assert (await amc.call("GET", path))[0] == 400
    clock.advance(0.5)
    status, urls = await amc.call("GET", path)
    assert status == 200
    (data_url,) = urls["downloadUrls"]
    (metadata_url,) = urls["metadataDownloadUrls"]
    async with amc.session.get(data_url) as response:
        assert response.status == 200
        first = await response.text()

    assert first.splitlines()[0] == "campaign_id,impressions,clicks"
    assert len(first.splitlines()) == 6
    async with amc.session.get(metadata_url) as response:
        assert (await response.json())["workflowExecutionId"] == execution_id

    _, again = await amc.call("GET", path)
    async with amc.session.get(again["downloadUrls"][0]) as response:
        assert await response.text() == first

    async with amc.session.get(data_url.replace("/sim/files/", "/sim/files/x")) as r:
        assert r.status == 403

    clock.advance(600)
    async with amc.session.get(data_url) as response:
        assert response.status == 403


# Faults


async def test_throttle_fault_answers_429_with_retry_after(amc: Amc) -> None:
    """throttle_rate=1 answers 429 with Retry-After and no limit words."""
    amc.simulator.set_faults(FaultOptions(throttle_rate=1.0, retry_after=2.5))
    bodies = []
    for _ in range(8):
        async with amc.session.get(
            amc.server.url + f"/amc/reporting/{INSTANCE}/workflowExecutions",
            headers=amc.headers(),
        ) as response:
            assert response.status == 429
            assert response.headers["Retry-After"] == "2.5"
            bodies.append(await response.text())

    assert any("<html>" in body for body in bodies)
    assert '{"message": "Too Many Requests"}' in bodies
    assert not any(re.search("concurrent|parallel|limit", b) for b in bodies)
    assert (await fetch_token(amc.session, amc.server))[0] == 200
    async with amc.session.get(amc.server.url + "/sim/stats") as response:
        assert (await response.json())["faults"]["throttle"] == 8


async def test_server_error_after_create_leaves_the_execution(amc: Amc) -> None:
    """A 5xx hit after the create still leaves the execution in the list."""
    amc.simulator.set_faults(FaultOptions(server_error_rate=1.0, after_create_share=1))
    status, _ = await amc.create()
    assert status in (500, 502, 503, 504)
    amc.simulator.set_faults(FaultOptions())
    _, page = await amc.listing()
    assert len(page["executions"]) == 1
    faults = amc.simulator.stats()["faults"]
    assert (faults["server_error"], faults["after_create"]) == (1, 1)


async def test_server_error_before_create_creates_nothing(amc: Amc) -> None:
    """With after_create_share=0 a 5xx create has created nothing."""
    amc.simulator.set_faults(FaultOptions(server_error_rate=1.0, after_create_share=0))
    statuses = {(await amc.create())[0] for _ in range(6)}
    assert statuses <= {500, 502, 503, 504}
    assert amc.simulator.stats()["executions"]["total"] == 0


async def test_malformed_fault_garbles_a_create_that_happened(amc: Amc) -> None:
    """malformed_rate=1 answers 200 with a body that is not JSON."""
    amc.simulator.set_faults(FaultOptions(malformed_rate=1.0, after_create_share=1))
    for _ in range(4):
        status, body = await amc.create()
        assert status == 200
        assert isinstance(body, str)

    amc.simulator.set_faults(FaultOptions())
    assert len((await amc.listing())[1]["executions"]) == 4
    assert amc.simulator.stats()["faults"]["malformed"] == 4


async def test_slow_fault_delays_the_answer(amc: Amc) -> None:
    """slow_rate=1 delays each AMC answer by slow_by real seconds."""
    amc.simulator.set_faults(FaultOptions(slow_rate=1.0, slow_by=0.05))
    began = time.monotonic()
    assert (await amc.listing())[0] == 200
    assert time.monotonic() - began >= 0.05
    assert amc.simulator.stats()["faults"]["slow"] == 1


async def test_faults_can_be_set_over_http(amc: Amc) -> None:
    """POST /sim/faults replaces the faults; invalid values are 400."""
    status, _ = await amc.call(
        "POST", "/sim/faults", json_body={"throttle_rate": 1.0}, headers={}
    )
    assert status == 200
    assert (await amc.listing())[0] == 429
    for bad in ({"throttle_rate": 2.0}, {"no_such_fault": 1}):
        assert (await amc.call("POST", "/sim/faults", json_body=bad, headers={}))[
            0
        ] == 400

    await amc.call("POST", "/sim/faults", json_body={}, headers={})
    assert (await amc.listing())[0] == 200


# Stats


async def test_duplicates_are_counted(start: Start, clock: FakeClock) -> None:
    """The same work submitted again while in flight or succeeded is a duplicate."""
    amc = await start(privacy_repeats=100)
    await amc.create()
    await amc.create()
    await amc.create({**SAVED, "parameterValues": {"a": 1}})
    await amc.create({"workflow": {"sqlQuery": "SELECT  a\n FROM t"}, **WINDOW})
    await amc.create({"workflow": {"sqlQuery": "SELECT a FROM t"}, **WINDOW})
    assert amc.simulator.stats()["duplicates"] == 2
    clock.advance(30)
    await amc.create()
    assert amc.simulator.stats()["duplicates"] == 3


async def test_max_concurrency_is_swept_from_the_intervals(
    start: Start, clock: FakeClock
) -> None:
    """Peaks per instance and account count UI executions; overruns are violations."""
    amc = await start(instance_limit=3, privacy_repeats=100)
    for _ in range(3):
        await amc.create()

    clock.advance(21)
    await amc.create()
    await amc.create(instance="amc2")
    stats = amc.simulator.stats()
    assert stats["max_concurrency"] == {
        "instances": {"amc1": 3, "amc2": 1},
        "accounts": {ACCOUNT: 3},
    }
    assert stats["limit_violations"] == 0
    amc.simulator.add_ui_executions("amc2", 3, duration=600.0)
    stats = amc.simulator.stats()
    assert stats["max_concurrency"]["instances"]["amc2"] == 4
    assert stats["max_concurrency"]["accounts"][ACCOUNT] == 5
    assert stats["limit_violations"] == 1
    assert stats["executions"]["by_status"]["SUCCEEDED"] == 3
    assert stats["executions"]["total"] == 8


async def test_stats_document_is_served_without_auth(amc: Amc) -> None:
    """GET /sim/stats is the same document as stats(), with every key present."""
    await amc.create()
    status, served = await amc.call("GET", "/sim/stats", headers={})
    assert status == 200
    assert served == amc.simulator.stats()
    assert set(served) == {
        "requests",
        "rejected_creates",
        "duplicates",
        "max_concurrency",
        "limit_violations",
        "executions",
        "faults",
        "speed",
    }
    assert served["requests"]["create"] == 1
    status, executions = await amc.call("GET", "/sim/executions", headers={})
    assert status == 200
    assert executions[0]["origin"] == "api"
    assert executions[0]["window"]["start"] == "2026-05-01T00:00:00"


# Serving and configuration


async def test_serve_runs_until_cancelled() -> None:
    """serve() logs simulator_started with its port and answers until cancelled."""
    with capture_logs() as events:
        task = asyncio.create_task(serve(SimulatorOptions(), "127.0.0.1", 0))
        for _ in range(200):
            started = [e for e in events if e["event"] == "simulator_started"]
            if started:
                break

            await asyncio.sleep(0.01)

        assert started[0]["host"] == "127.0.0.1"
        async with (
            aiohttp.ClientSession() as session,
            session.get(started[0]["url"] + "/sim/stats") as response,
        ):
            assert response.status == 200

        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def test_options_from_settings_maps_the_config() -> None:
    """Config durations become seconds; accounts become AccountSpecs."""
    settings = SimulatorSettings(
        speed=120,
        seed=7,
        duration=timedelta(minutes=5),
        failure_rate=0.1,
        privacy_repeats=3,
        token_lifetime=timedelta(minutes=30),
        faults=FaultSettings(throttle_rate=0.2, slow_by=timedelta(seconds=3)),
    )
    accounts = [
        AccountSettings(
            id=ACCOUNT,
            marketplace_id=MARKETPLACE,
            max_parallel=50,
            instances=[InstanceSettings(id="amc1", max_parallel=4)],
        )
    ]
    options = options_from_settings(settings, accounts)
    assert (options.speed, options.seed, options.duration) == (120, 7, 300.0)
    assert (options.failure_rate, options.privacy_repeats) == (0.1, 3)
    assert options.token_lifetime == 1800.0
    assert options.faults == FaultOptions(throttle_rate=0.2, slow_by=3.0)
    assert options.accounts == {ACCOUNT: AccountSpec(MARKETPLACE, 50, {"amc1": 4})}


def test_options_refuse_impossible_values() -> None:
    """Rates outside [0, 1] and a non-positive speed are refused when built."""
    with pytest.raises(ValueError, match="throttle_rate"):
        FaultOptions(throttle_rate=1.5)

    with pytest.raises(ValueError, match="speed"):
        SimulatorOptions(speed=0)
