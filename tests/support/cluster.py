"""The simulator and daemons as separate processes, and checks on what they did."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import create_async_engine

from scheduler.config import DATABASE_URL_ENV, load
from scheduler.jobs import build_run
from scheduler.store.engine import Database, normalise_url
from scheduler.store.models import TERMINAL_STATES, attempts, events, runs
from scheduler.store.queue import enqueue
from scheduler.windows import explicit
from tests.support.daemon import Daemon, request, write_config

SIM_CREDENTIALS = {
    "client_id": "sim-client-id",
    "client_secret": "sim-client-secret",
    "refresh_token": "Atzr|sim-refresh-token",
}


def accounts(instances: int = 3, account_limit: int = 15) -> list[dict[str, Any]]:
    return [
        {
            "id": "ENTITYCLUSTER",
            "marketplace_id": "ATVPDKIKX0DER",
            "max_parallel": account_limit,
            "instances": [
                {"id": f"amcc{n}", "max_parallel": 10} for n in range(1, instances + 1)
            ],
        }
    ]


def jobs_for(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        {
            "name": f"{instance['id']}-job",
            "instance": instance["id"],
            "workflow_id": "wf",
        }
        for account in document["accounts"]
        for instance in account["instances"]
    ]


class Cluster:
    """One simulator process, any number of daemon processes, one database."""

    def __init__(
        self,
        tmp: Path,
        database_url: str,
        *,
        speed: float = 600,
        simulator: dict[str, Any] | None = None,
        dispatcher: dict[str, Any] | None = None,
        account_list: list[dict[str, Any]] | None = None,
        secrets: dict[str, str] | None = None,
    ) -> None:
        self.tmp = tmp
        self.database_url = database_url
        self.accounts = account_list or accounts()
        sim_document = {
            "amc": {
                "api_url": "simulator",
                "simulator": {"speed": speed, "seed": 11, **(simulator or {})},
            },
            "accounts": self.accounts,
        }
        self.sim_config = write_config(tmp / "simulator.yaml", sim_document)
        self.simulator = Daemon(self.sim_config, command=("simulate", "--port", "0"))
        self.daemons: list[Daemon] = []
        self.dispatcher = {
            "poll_min": 0.2,
            "poll_max": 2,
            "admit_interval": 0.5,
            "retry_base": 0.2,
            "retry_max": 5,
            "lease": 3,
            "expected_duration": f"{1200 / speed}s",
            "poll_waste": f"{30 / speed}s",
            "shutdown_timeout": 5,
            **(dispatcher or {}),
        }
        self.secrets = secrets or {}
        self._config: Path | None = None

    def start_simulator(self) -> str:
        self.simulator.start()
        return str(self.simulator.wait_for("simulator_started")["url"])

    def daemon_config(self) -> Path:
        if self._config is None:
            url = str(self.simulator.wait_for("simulator_started")["url"])
            document = {
                "amc": {
                    "api_url": url,
                    "token_url": f"{url}/auth/o2/token",
                    **SIM_CREDENTIALS,
                    "requests_per_second": 500,
                    "burst": 500,
                    "timeout": 5,
                },
                "accounts": self.accounts,
                "jobs": jobs_for({"accounts": self.accounts}),
                "dispatcher": self.dispatcher,
                "server": {"port": 0, "api_token": "cluster-token-1"},
                "logging": {"level": "info", "format": "json"},
            }
            document["amc"].update(self.secrets)
            self._config = write_config(self.tmp / "daemon.yaml", document)

        return self._config

    def start_daemon(self) -> Daemon:
        daemon = Daemon(
            self.daemon_config(), env={DATABASE_URL_ENV: self.database_url}
        ).start()
        self.daemons.append(daemon)
        return daemon

    def stats(self) -> dict[str, Any]:
        url = str(self.simulator.wait_for("simulator_started")["url"])
        status, body = request("GET", f"{url}/sim/stats")
        assert status == 200
        return dict(json.loads(body))

    def sim_post(self, path: str, body: Any) -> Any:
        url = str(self.simulator.wait_for("simulator_started")["url"])
        status, answer = request("POST", f"{url}{path}", body)
        assert status == 200, answer
        return json.loads(answer)

    def enqueue(self, per_instance: int) -> int:
        settings = load(self.daemon_config()).settings

        async def go() -> int:
            db = Database(self.database_url, Path("unused"))
            await db.open()
            try:
                total = 0
                base = explicit_start()
                for job in settings.jobs:
                    new = [
                        build_run(
                            settings,
                            job,
                            now_utc(),
                            source="test",
                            window=explicit(base(n), base(n + 1)),
                        )
                        for n in range(per_instance)
                    ]
                    total += sum(r.created for r in await enqueue(db, new))

                return total
            finally:
                await db.close()

        return asyncio.run(go())

    def states(self) -> dict[str, int]:
        async def go() -> dict[str, int]:
            engine = create_async_engine(normalise_url(self.database_url))
            try:
                async with engine.connect() as conn:
                    rows = await conn.execute(
                        select(runs.c.state, func.count()).group_by(runs.c.state)
                    )
                    return dict(rows.all())
            finally:
                await engine.dispose()

        return asyncio.run(go())

    def wait_all_terminal(self, within: float = 120.0) -> dict[str, int]:
        terminal = {state.value for state in TERMINAL_STATES}
        deadline = time.monotonic() + within
        while True:
            states = self.states()
            if states and set(states) <= terminal:
                return states

            if time.monotonic() > deadline:
                raise AssertionError(f"not all runs ended within {within}s: {states}")

            time.sleep(0.25)

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.__exit__()

        self.simulator.__exit__()


def explicit_start() -> Any:
    from datetime import datetime, timedelta

    origin = datetime(2026, 2, 1)
    return lambda n: origin + timedelta(hours=n)


def now_utc() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


@contextmanager
def cluster(tmp: Path, database_url: str, **kw: Any) -> Iterator[Cluster]:
    rig = Cluster(tmp, database_url, **kw)
    rig.start_simulator()
    try:
        yield rig
    finally:
        rig.stop()


def history_problems(database_url: str) -> list[str]:
    """Broken event chains, runs without a successful attempt, shared executions."""

    async def go() -> list[str]:
        engine = create_async_engine(normalise_url(database_url))
        problems: list[str] = []
        try:
            async with engine.connect() as conn:
                chain: dict[int, list[tuple[str | None, str]]] = {}
                rows = await conn.execute(
                    select(
                        events.c.run_id, events.c.from_state, events.c.to_state
                    ).order_by(events.c.run_id, events.c.id)
                )
                for run_id, before, after in rows:
                    chain.setdefault(run_id, []).append((before, after))

                final = dict(
                    (await conn.execute(select(runs.c.id, runs.c.state))).all()
                )
                for run_id, steps in chain.items():
                    if steps[0] != (None, "queued"):
                        problems.append(f"run {run_id} starts with {steps[0]}")

                    for (_, previous), (before, _) in itertools.pairwise(steps):
                        if before != previous:
                            problems.append(f"run {run_id}: {previous} then {before}")

                    if steps[-1][1] != final[run_id]:
                        problems.append(f"run {run_id}: history ends {steps[-1][1]}")

                executions = (
                    await conn.execute(
                        select(attempts.c.execution_id, func.count())
                        .group_by(attempts.c.execution_id)
                        .having(func.count() > 1)
                    )
                ).all()
                problems += [f"execution {e} owned {n} times" for e, n in executions]
                succeeded = (
                    await conn.execute(
                        select(attempts.c.run_id, func.count())
                        .where(attempts.c.outcome == "succeeded")
                        .group_by(attempts.c.run_id)
                        .having(func.count() > 1)
                    )
                ).all()
                problems += [f"run {r} succeeded {n} times" for r, n in succeeded]
        finally:
            await engine.dispose()

        return problems

    return asyncio.run(go())
