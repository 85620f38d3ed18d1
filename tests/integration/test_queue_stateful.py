"""The queue as a state machine: admission, submission, completion, crashes and
lease expiry, driven by Hypothesis against the real store on a real Postgres.

Workers act on the runs they hold the way the dispatcher does
(scheduler/submitter.py), against a fake AMC kept in the test. After every
step the database is checked: slots within the limits, every live execution
owned by one attempt or waiting for a lookup, never two live executions for
one run, and every run's history an unbroken chain.
"""

from __future__ import annotations

import asyncio
import functools
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from hypothesis import Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import select, text

from scheduler.store.engine import Database
from scheduler.store.models import (
    SLOT_STATES,
    TERMINAL_STATES,
    RunState,
    attempts,
    events,
    runs,
)
from scheduler.store.polls import owned_execution_ids
from scheduler.store.queue import (
    AccountLimits,
    InstanceLimit,
    admit,
    claim_expired_submissions,
    enqueue,
    renew_submission_leases,
)
from scheduler.store.records import RunRecord
from scheduler.store.transitions import (
    Observation,
    Outcome,
    record_observation,
    record_submitted,
    requeue,
)
from tests.support.postgres import PostgresServer, new_database_name, render
from tests.support.runs import new_run

ACCOUNT = AccountLimits("ACC", 3, (InstanceLimit("i1", 2), InstanceLimit("i2", 2)))
INSTANCE_LIMITS = {i.instance_id: i.limit for i in ACCOUNT.instances}
LEASE_SECONDS = 60.0
# Three to start with, and a few restarts (each with a fresh id; more only
# when none is left alive).
MAX_WORKERS = 5
MAX_UNFINISHED = 12
SLOT_VALUES = {state.value for state in SLOT_STATES}
TERMINAL_VALUES = {state.value for state in TERMINAL_STATES}
IN_FLIGHT_VALUES = {RunState.PENDING.value, RunState.RUNNING.value}

T = TypeVar("T")
picks = st.integers(min_value=0, max_value=11)
# How AMC answers a create, weighted towards the answers that need recovery.
answers = st.sampled_from(
    [
        "ok",
        "ok",
        "lost_answer",
        "ambiguous_landed",
        "ambiguous_not_landed",
        "limit_error",
    ]
)


@dataclass
class Execution:
    """One execution at the fake AMC, created for one run."""

    id: str
    run_id: int
    created_at: datetime
    status: str = "PENDING"

    @property
    def terminal(self) -> bool:
        return self.status in ("SUCCEEDED", "FAILED")


class FakeAmc:
    """The executions AMC knows, as the workers created them."""

    def __init__(self) -> None:
        self.executions: dict[str, Execution] = {}

    def live(self, run_id: int | None = None) -> list[Execution]:
        return [
            e
            for e in self.executions.values()
            if not e.terminal and (run_id is None or e.run_id == run_id)
        ]

    def create(self, run_id: int, at: datetime) -> Execution:
        # The no-duplicate rule at the moment it matters: the create call.
        duplicates = [e.id for e in self.live(run_id)]
        assert not duplicates, f"run {run_id} created again beside {duplicates}"
        execution = Execution(f"e{len(self.executions) + 1}", run_id, at)
        self.executions[execution.id] = execution
        return execution


def step(method: Callable[..., None]) -> Callable[..., None]:
    """Count a rule as started, so teardown knows whether it ended cleanly."""

    @functools.wraps(method)
    def counted(self: QueueMachine, *args: Any, **kwargs: Any) -> None:
        self.started += 1
        method(self, *args, **kwargs)

    return counted


def nth(items: list[T], pick: int) -> T:
    return items[pick % len(items)]


async def expire_leases(db: Database, worker: str) -> None:
    """Time passes for ``worker``'s submission leases: they are all expired."""
    async with db.begin() as conn:
        await conn.execute(
            text(
                "UPDATE runs SET lease_expires_at = now() - interval '1 second'"
                " WHERE lease_owner = :worker AND state = 'submitting'"
            ),
            {"worker": worker},
        )


class QueueMachine(RuleBasedStateMachine):
    """One account (limit 3) with instances i1 and i2 (limit 2 each); workers that
    admit, create, lose answers, crash and recover."""

    server: ClassVar[PostgresServer | None] = None
    template: ClassVar[str | None] = None

    def __init__(self) -> None:
        super().__init__()
        assert self.server is not None
        assert self.template is not None
        self.loop = asyncio.new_event_loop()
        self.name = new_database_name()
        url = self.run(self.server.create_database(self.name, template=self.template))
        self.db = Database(render(url), Path("unused"))
        self.run(self.db.open())
        self.amc = FakeAmc()
        # Every worker is alive, crashed, or crashed with its leases expired.
        self.workers = {"w1": "alive", "w2": "alive", "w3": "alive"}
        # What each live worker holds in `submitting`, as it learned it.
        self.holding: dict[str, dict[int, RunRecord]] = {w: {} for w in self.workers}
        self.snapshot: dict[int, RunRecord] = {}
        self.started = 0
        self.verified = 0

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self.loop.run_until_complete(coroutine)

    def teardown(self) -> None:
        try:
            # Only a machine whose every step passed is worth draining.
            if self.verified == self.started:
                self.drain()
        finally:
            self.run(self.db.close())
            assert self.server is not None
            self.run(self.server.drop_database(self.name))
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()

    # What the model knows

    def alive(self) -> list[str]:
        return [w for w, status in self.workers.items() if status == "alive"]

    def held(self) -> list[tuple[str, RunRecord]]:
        return [
            (worker, run)
            for worker in self.alive()
            for _, run in sorted(self.holding[worker].items())
        ]

    def in_flight(self) -> list[RunRecord]:
        return [r for r in self.snapshot.values() if r.state in IN_FLIGHT_VALUES]

    def has_room_to_enqueue(self) -> bool:
        # A backlog past a few times the account's limit adds steps, not cases.
        states = [r.state for r in self.snapshot.values()]
        return len([s for s in states if s not in TERMINAL_VALUES]) < MAX_UNFINISHED

    def has_alive(self) -> bool:
        return bool(self.alive())

    def has_held(self) -> bool:
        return bool(self.held())

    def has_in_flight(self) -> bool:
        return bool(self.in_flight())

    def has_unexpired_crash(self) -> bool:
        return "crashed" in self.workers.values()

    def can_crash(self) -> bool:
        return len(self.alive()) > 1

    def needs_worker(self) -> bool:
        alive = len(self.alive())
        return alive == 0 or (alive < 2 and len(self.workers) < MAX_WORKERS)

    # What a worker does

    def clock(self) -> datetime:
        async def now() -> datetime:
            async with self.db.connect() as conn:
                value = await conn.scalar(text("SELECT clock_timestamp()"))
                assert isinstance(value, datetime)
                return value

        return self.run(now())

    def lookup(self, run: RunRecord, since: datetime) -> Execution | None:
        """What submitter._find_existing finds: a live execution created for this
        run since ``since`` that no attempt owns yet."""
        found = [e for e in self.amc.live(run.id) if e.created_at >= since]
        owned = self.run(owned_execution_ids(self.db, [e.id for e in found]))
        candidates = sorted(
            (e for e in found if e.id not in owned), key=lambda e: (e.created_at, e.id)
        )
        return candidates[0] if candidates else None

    def adopt(self, worker: str, run: RunRecord, execution: Execution) -> None:
        adopted = self.run(
            record_submitted(
                self.db,
                run,
                owner=worker,
                execution_id=execution.id,
                amc_status=execution.status,
                amc_create_time=execution.created_at,
                adopted=True,
                worker_id=worker,
            )
        )
        assert adopted is not None, f"{worker} could not adopt {execution.id}"
        assert adopted.execution_id == execution.id
        assert adopted.lookup_since is None
        self.holding[worker].pop(run.id, None)

    def looked_up(self, worker: str, run: RunRecord) -> bool:
        """Before creating for a run with a lookup due, look first (as submit()
        does); True when an execution was found and adopted."""
        if run.lookup_since is None:
            return False

        found = self.lookup(run, run.lookup_since)
        if found is None:
            return False

        self.adopt(worker, run, found)
        return True

    def submit(self, worker: str, run: RunRecord) -> None:
        """Look first if a lookup is due, else create and record."""
        if not self.looked_up(worker, run):
            self.create_ok(worker, run)

    def create_ok(self, worker: str, run: RunRecord) -> None:
        """Create at AMC and record it: a plain successful submission."""
        execution = self.amc.create(run.id, self.clock())
        recorded = self.run(
            record_submitted(
                self.db,
                run,
                owner=worker,
                execution_id=execution.id,
                amc_status=execution.status,
                amc_create_time=execution.created_at,
                worker_id=worker,
            )
        )
        assert recorded is not None, f"{worker} lost its lease on run {run.id}"
        assert recorded.state == RunState.PENDING.value
        assert recorded.attempt == run.attempt + 1
        self.holding[worker].pop(run.id)

    def create_lost_answer(self, worker: str, run: RunRecord) -> None:
        """The create lands at AMC; the worker dies before it records it."""
        self.amc.create(run.id, self.clock())
        self.crash(worker)

    def create_ambiguous(self, worker: str, run: RunRecord, landed: bool) -> None:
        """The create times out; it may or may not have reached AMC."""
        if landed:
            self.amc.create(run.id, self.clock())

        self.requeue(worker, run, "create_ambiguous", run.claimed_at)

    def limit_error(self, worker: str, run: RunRecord) -> None:
        """AMC refuses the create with a limit error: nothing was created."""
        self.requeue(worker, run, "limit_reached", None)

    def requeue(
        self, worker: str, run: RunRecord, reason: str, lookup: datetime | None
    ) -> RunRecord:
        requeued = self.run(
            requeue(
                self.db,
                run,
                owner=worker,
                delay=0,
                reason=reason,
                lookup_since=lookup,
                worker_id=worker,
            )
        )
        assert requeued is not None, f"{worker} lost its lease on run {run.id}"
        assert requeued.state == RunState.QUEUED.value
        assert requeued.lease_owner is None
        assert requeued.attempt == run.attempt
        earliest = [t for t in (run.lookup_since, lookup) if t is not None]
        assert requeued.lookup_since == (min(earliest) if earliest else None)
        self.holding[worker].pop(run.id, None)
        return requeued

    def admit(self, worker: str, max_claims: int) -> None:
        held = Counter(
            r.instance_id for r in self.snapshot.values() if r.state in SLOT_VALUES
        )
        queued = Counter(
            r.instance_id
            for r in self.snapshot.values()
            if r.state == RunState.QUEUED.value
        )
        account_free = max(0, ACCOUNT.limit - sum(held.values()))
        fits = sum(
            min(max(0, limit - held[instance]), queued[instance])
            for instance, limit in INSTANCE_LIMITS.items()
        )
        admission = self.run(
            admit(
                self.db,
                ACCOUNT,
                owner=worker,
                lease_seconds=LEASE_SECONDS,
                max_claims=max_claims,
            )
        )
        # Work-conserving: whatever fits the free slots is claimed at once.
        assert len(admission.claimed) == min(max_claims, account_free, fits), (
            f"claimed {[r.id for r in admission.claimed]} of queued {dict(queued)}"
            f" with {dict(held)} held and at most {max_claims}"
        )
        for run in admission.claimed:
            assert self.snapshot[run.id].state == RunState.QUEUED.value
            assert run.state == RunState.SUBMITTING.value
            assert run.lease_owner == worker
            assert run.claimed_at is not None
            self.holding[worker][run.id] = run

    def recover(self, worker: str) -> None:
        """claim_expired_submissions, then reconcile each run the way
        submitter.recover does: adopt what was created, else requeue to look."""
        expired = {
            r.id: r.lease_owner
            for r in self.snapshot.values()
            if r.state == RunState.SUBMITTING.value
            and self.workers.get(r.lease_owner or "") == "expired"
        }
        taken = self.run(
            claim_expired_submissions(self.db, worker, LEASE_SECONDS, limit=50)
        )
        assert {run.id: previous for run, previous in taken} == expired
        for run, _ in taken:
            assert run.lease_owner == worker
            self.holding[worker][run.id] = run
            since = run.lookup_since or run.claimed_at or run.updated_at
            found = self.lookup(run, since)
            if found is not None:
                self.adopt(worker, run, found)
            else:
                self.requeue(worker, run, "lease_expired", since)

    def expire(self, worker: str) -> None:
        self.run(expire_leases(self.db, worker))
        self.workers[worker] = "expired"

    def crash(self, worker: str) -> None:
        self.workers[worker] = "crashed"
        self.holding[worker].clear()

    def observe(self, run: RunRecord, kind: str) -> None:
        """AMC moves the run's execution on; the poller records what it saw."""
        assert run.execution_id is not None
        execution = self.amc.executions[run.execution_id]
        assert execution.run_id == run.id
        retry = kind == "retry" and run.attempt < run.max_attempts
        if kind == "start" and run.state == RunState.PENDING.value:
            execution.status = "RUNNING"
            outcome = Outcome(RunState.RUNNING, "status_changed")
        elif retry or kind == "fail":
            execution.status = "FAILED"
            outcome = (
                Outcome(RunState.QUEUED, "execution_failed", retry_delay=0)
                if retry
                else Outcome(RunState.FAILED, "execution_failed")
            )
        else:
            execution.status = "SUCCEEDED"
            outcome = Outcome(RunState.SUCCEEDED, "succeeded")

        updated = self.run(
            record_observation(self.db, Observation(run, execution.status), outcome)
        )
        assert updated is not None, f"run {run.id} did not move to {outcome.to}"
        assert updated.state == outcome.to.value
        assert updated.lease_owner is None

    def lease_pass(self, worker: str) -> None:
        """What the dispatcher's lease pass does: renew, then recover."""
        renewed = self.run(renew_submission_leases(self.db, worker, LEASE_SECONDS))
        assert renewed == len(self.holding[worker])
        self.recover(worker)

    # Rules

    @precondition(has_room_to_enqueue)
    @rule(instance=st.sampled_from(sorted(INSTANCE_LIMITS)), n=st.integers(1, 3))
    @step
    def enqueue_runs(self, instance: str, n: int) -> None:
        new = [
            new_run(instance, account_id=ACCOUNT.account_id, max_attempts=2)
            for _ in range(n)
        ]
        results = self.run(enqueue(self.db, new))
        assert all(result.created for result in results)

    @precondition(has_alive)
    @rule(pick=picks, max_claims=st.integers(1, 4))
    @step
    def admit_runs(self, pick: int, max_claims: int) -> None:
        self.admit(nth(self.alive(), pick), max_claims)

    @precondition(has_held)
    @rule(pick=picks, replies=st.lists(answers, min_size=1, max_size=3))
    @step
    def create(self, pick: int, replies: list[str]) -> None:
        """A worker submits runs it holds; AMC answers each create its own way."""
        worker = nth(sorted({w for w, _ in self.held()}), pick)
        for run, answer in zip(
            sorted(self.holding[worker].values(), key=lambda r: r.id),
            replies,
            strict=False,
        ):
            # As submit() does: a run with a lookup due looks before it creates.
            if self.looked_up(worker, run):
                continue

            if answer == "ok":
                self.create_ok(worker, run)
            elif answer == "lost_answer":
                self.create_lost_answer(worker, run)
                return
            elif answer in ("ambiguous_landed", "ambiguous_not_landed"):
                landed = answer == "ambiguous_landed"
                self.create_ambiguous(worker, run, landed=landed)
            else:
                self.limit_error(worker, run)

    @precondition(has_in_flight)
    @rule(pick=picks, kind=st.sampled_from(["start", "succeed", "retry", "fail"]))
    @step
    def poll(self, pick: int, kind: str) -> None:
        """An in-flight run's execution starts, succeeds or fails at AMC."""
        self.observe(nth(self.in_flight(), pick), kind)

    @precondition(has_alive)
    @rule(pick=picks)
    @step
    def lease_pass_of(self, pick: int) -> None:
        self.lease_pass(nth(self.alive(), pick))

    @precondition(can_crash)
    @rule(pick=picks)
    @step
    def crash_worker(self, pick: int) -> None:
        """A worker stops for good; its submission leases run out."""
        worker = nth(self.alive(), pick)
        self.crash(worker)
        self.expire(worker)

    @precondition(has_unexpired_crash)
    @rule(pick=picks)
    @step
    def leases_expire(self, pick: int) -> None:
        """The lease of a worker that died mid-create runs out."""
        crashed = [w for w, status in self.workers.items() if status == "crashed"]
        self.expire(nth(crashed, pick))

    @precondition(needs_worker)
    @rule()
    @step
    def start_worker(self) -> None:
        """A new process: a fresh worker id, never a crashed one's."""
        worker = f"w{len(self.workers) + 1}"
        self.workers[worker] = "alive"
        self.holding[worker] = {}

    # Invariants, read from the database

    @invariant()
    def check(self) -> None:
        rows, attempt_rows, event_rows = self.run(self.read())
        self.snapshot = {r.id: r for r in rows}
        self.check_slots()
        self.check_leases()
        self.check_executions(attempt_rows)
        self.check_history(event_rows)
        self.verified = self.started

    async def read(self) -> tuple[list[RunRecord], list[Any], list[Any]]:
        async with self.db.connect() as conn:
            run_rows = await conn.execute(select(runs).order_by(runs.c.id))
            attempt_rows = await conn.execute(
                select(attempts).order_by(attempts.c.run_id, attempts.c.number)
            )
            event_rows = await conn.execute(
                select(
                    events.c.run_id, events.c.from_state, events.c.to_state
                ).order_by(events.c.run_id, events.c.id)
            )
            return (
                [RunRecord.from_row(row) for row in run_rows],
                list(attempt_rows),
                list(event_rows),
            )

    def check_slots(self) -> None:
        held = Counter(
            r.instance_id for r in self.snapshot.values() if r.state in SLOT_VALUES
        )
        for instance, limit in INSTANCE_LIMITS.items():
            assert held[instance] <= limit, f"{instance} holds {held[instance]}"

        assert sum(held.values()) <= ACCOUNT.limit, f"account holds {dict(held)}"

    def check_leases(self) -> None:
        """A live worker holds in `submitting` exactly what it believes it holds."""
        for worker in self.alive():
            owned = {
                r.id
                for r in self.snapshot.values()
                if r.state == RunState.SUBMITTING.value and r.lease_owner == worker
            }
            assert owned == set(self.holding[worker]), worker

        for run in self.snapshot.values():
            submitting = run.state == RunState.SUBMITTING.value
            assert (run.lease_owner is not None) == submitting, run.id
            assert (run.claimed_at is not None) == submitting, run.id
            if run.state in (RunState.QUEUED.value, RunState.SUBMITTING.value):
                assert run.execution_id is None, run.id

    def check_executions(self, attempt_rows: list[Any]) -> None:
        owners = Counter(row.execution_id for row in attempt_rows)
        shared = [e for e, n in owners.items() if n > 1]
        assert not shared, f"attempts share executions {shared}"
        by_execution = {row.execution_id: row for row in attempt_rows}
        per_run: dict[int, list[Any]] = {}
        for row in attempt_rows:
            per_run.setdefault(row.run_id, []).append(row)

        # Attempts number 1..n; only the current one of an in-flight run is open.
        for run in self.snapshot.values():
            rows = per_run.get(run.id, [])
            numbers = [r.number for r in rows]
            assert numbers == list(range(1, run.attempt + 1)), (run.id, numbers)
            open_rows = [r for r in rows if r.outcome is None]
            if run.state in IN_FLIGHT_VALUES:
                assert [(r.number, r.execution_id) for r in open_rows] == [
                    (run.attempt, run.execution_id)
                ], run.id
                execution = self.amc.executions[str(run.execution_id)]
                assert execution.run_id == run.id
                assert not execution.terminal, run.id
            else:
                assert open_rows == [], run.id

        # No run has two live executions at AMC, and each live execution is
        # either its run's current attempt or a lookup that run will make.
        live = Counter(e.run_id for e in self.amc.live())
        assert all(n == 1 for n in live.values()), f"duplicates {live}"
        for execution in self.amc.live():
            run = self.snapshot[execution.run_id]
            attempt = by_execution.get(execution.id)
            if attempt is not None:
                assert attempt.run_id == run.id
                assert run.execution_id == execution.id, execution.id
                assert run.state in IN_FLIGHT_VALUES, execution.id
            else:
                assert self.will_look_up(run, execution), (execution, run)

    def will_look_up(self, run: RunRecord, execution: Execution) -> bool:
        """Whether ``run`` will find ``execution`` before it creates again."""
        if run.state not in (RunState.QUEUED.value, RunState.SUBMITTING.value):
            return False

        if run.lookup_since is not None and run.lookup_since <= execution.created_at:
            return True

        # Still under a dead owner's lease: its recovery looks from claimed_at.
        return (
            run.state == RunState.SUBMITTING.value
            and self.workers.get(run.lease_owner or "") in ("crashed", "expired")
            and run.claimed_at is not None
            and run.claimed_at <= execution.created_at
        )

    def check_history(self, event_rows: list[Any]) -> None:
        chains: dict[int, list[tuple[str | None, str]]] = {}
        for row in event_rows:
            chains.setdefault(row.run_id, []).append((row.from_state, row.to_state))

        assert set(chains) == set(self.snapshot)
        for run_id, chain in chains.items():
            previous = None
            for from_state, to_state in chain:
                assert from_state == previous, (run_id, chain)
                previous = to_state

            assert chain[0] == (None, RunState.QUEUED.value), (run_id, chain)
            assert previous == self.snapshot[run_id].state, (run_id, chain)

    # The end: with someone alive to recover, every run can finish

    def drain(self) -> None:
        for worker, run in self.held():
            self.submit(worker, run)

        for worker in [w for w, status in self.workers.items() if status == "crashed"]:
            self.expire(worker)

        if not self.alive():
            self.start_worker()

        worker = self.alive()[0]
        for _ in range(2 * len(self.snapshot) + 3):
            self.lease_pass(worker)
            self.check()
            self.admit(worker, ACCOUNT.limit)
            for run in list(self.holding[worker].values()):
                self.submit(worker, run)

            self.check()
            # Half the runs fail once first, so the drain retries too.
            for run in self.in_flight():
                self.observe(run, "retry" if run.id % 2 else "succeed")

            self.check()
            if all(r.state in TERMINAL_VALUES for r in self.snapshot.values()):
                break

        unfinished = {r.id: r.state for r in self.snapshot.values()}
        assert set(unfinished.values()) <= TERMINAL_VALUES, unfinished
        assert self.amc.live() == [], "executions left running at AMC"


def test_queue_state_machine(pg_server: PostgresServer, template_database: str) -> None:
    """Any mix of admit, create, crash and recovery keeps limits; none is sent twice."""
    QueueMachine.server = pg_server
    QueueMachine.template = template_database
    try:
        run_state_machine_as_test(
            QueueMachine,
            settings=settings(
                max_examples=30,
                stateful_step_count=30,
                deadline=None,
                # Each replay needs a fresh database, so shrinking a failure
                # takes minutes and would outlast the test's timeout: a failure
                # is reported with the steps as generated (add Phase.shrink
                # locally to minimise one).
                phases=[Phase.explicit, Phase.reuse, Phase.generate],
                report_multiple_bugs=False,
            ),
        )
    finally:
        QueueMachine.server = None
        QueueMachine.template = None


async def test_a_late_create_answer_cannot_adopt_an_execution_twice(
    db: Database,
) -> None:
    """A late create answer never gives a finished execution a second attempt."""
    await enqueue(db, [new_run("i1", account_id=ACCOUNT.account_id)])
    admission = await admit(
        db, ACCOUNT, owner="w1", lease_seconds=LEASE_SECONDS, max_claims=1
    )
    (held,) = admission.claimed
    # w1's create of e1 went through, but w1 stalls before it records it and
    # its lease runs out; w2 takes the run over and adopts e1.
    await expire_leases(db, "w1")
    ((taken, _),) = await claim_expired_submissions(db, "w2", LEASE_SECONDS)
    adopted = await record_submitted(
        db,
        taken,
        owner="w2",
        execution_id="e1",
        amc_status="PENDING",
        amc_create_time=None,
        adopted=True,
    )
    assert adopted is not None
    # e1 fails with a retryable reason: the run goes back to the queue.
    retried = await record_observation(
        db,
        Observation(adopted, "FAILED", reason="Internal error"),
        Outcome(RunState.QUEUED, "execution_failed", retry_delay=60),
    )
    assert retried is not None
    assert retried.state == RunState.QUEUED.value
    # w1 wakes up with e1's answer. Its own lease is gone ...
    assert (
        await record_submitted(
            db,
            held,
            owner="w1",
            execution_id="e1",
            amc_status="PENDING",
            amc_create_time=None,
        )
        is None
    )
    # ... so it hands the execution over as Submitter._orphaned does.
    await record_submitted(
        db,
        held,
        owner=None,
        execution_id="e1",
        amc_status="PENDING",
        amc_create_time=None,
        adopted=True,
        expect=(RunState.QUEUED,),
    )
    async with db.connect() as conn:
        owners = (
            await conn.execute(
                select(attempts.c.run_id, attempts.c.number).where(
                    attempts.c.execution_id == "e1"
                )
            )
        ).all()
        state = await conn.scalar(select(runs.c.state).where(runs.c.id == held.id))

    assert [tuple(row) for row in owners] == [(held.id, 1)]
    assert state == RunState.QUEUED.value
