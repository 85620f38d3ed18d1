"""The queue: enqueue with dedupe, and admission of runs to slots.

Admission happens in one short transaction per account, serialised by a
transaction advisory lock. It counts the slots held per instance from the
rows that hold them (runs submitting, pending or running, and executions
started outside the scheduler that are still in flight), drops saturated
and paused instances before any LIMIT, and claims the chosen runs by id with
a state check, so a row changed meanwhile is simply not claimed.

Which runs get the account's free slots follows DESIGN.md: priority first
(aged, so that no run waits without bound); within a priority, a slot goes
to the instance whose backlog would finish last, and within an instance the
run expected to take longest starts first.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from .engine import Database
from .migrate import LOCK_CLASS
from .models import LIVE_STATES, SLOT_STATES, pauses
from .records import NewRun, RunRecord

ADMISSION_LOCK_CLASS = LOCK_CLASS + 1
NOTIFY_CHANNEL = "amc_scheduler"
SLOT_STATE_VALUES = sorted(state.value for state in SLOT_STATES)
_LIVE = "state IN ({})".format(", ".join(f"'{s.value}'" for s in sorted(LIVE_STATES)))


@contextlib.asynccontextmanager
async def single_statement(db: Database) -> AsyncIterator[AsyncConnection]:
    """A connection for work done in one statement, which is its own transaction.

    One statement is atomic by itself; leaving out BEGIN and COMMIT saves two
    round trips on the queue's busiest paths.
    """
    async with db.connect() as conn:
        yield await conn.execution_options(isolation_level="AUTOCOMMIT")


@dataclass(frozen=True)
class EnqueueResult:
    run: RunRecord
    created: bool


async def enqueue(
    db: Database, new_runs: Sequence[NewRun], worker_id: str | None = None
) -> list[EnqueueResult]:
    """Insert runs; a run whose dedupe key is already live is returned as it is.

    Live means queued, in flight or succeeded: a failed or cancelled run
    does not block a new one.
    """
    if len(new_runs) == 1:
        async with single_statement(db) as conn:
            return [await _enqueue_one(conn, new_runs[0], worker_id)]

    async with db.begin() as conn:
        return await enqueue_in(conn, new_runs, worker_id)


async def enqueue_in(
    conn: AsyncConnection, new_runs: Sequence[NewRun], worker_id: str | None = None
) -> list[EnqueueResult]:
    """``enqueue`` inside the caller's transaction (for once-only records)."""
    return [await _enqueue_one(conn, new, worker_id) for new in new_runs]


# The run, its event and the hint to admitters in one statement. Postgres
# delivers identical notifications of one transaction once, so a batch tells
# each account once however many runs it added.
_ENQUEUE = text(
    f"""
    WITH inserted AS (
        INSERT INTO runs (job, account_id, instance_id, dedupe_key, source,
                          priority, expected_seconds, request, max_attempts,
                          not_before)
        VALUES (:job, :account_id, :instance_id, :dedupe_key, :source,
                :priority, :expected_seconds, :request, :max_attempts,
                coalesce(CAST(:not_before AS timestamptz), now()))
        ON CONFLICT (dedupe_key) WHERE {_LIVE} DO NOTHING
        RETURNING *
    ), logged AS (
        INSERT INTO events (run_id, from_state, to_state, reason, detail, worker_id)
        SELECT id, NULL, 'queued', 'enqueued', CAST(:detail AS jsonb),
               CAST(:worker_id AS text)
        FROM inserted
    )
    SELECT inserted.*, pg_notify(:channel, 'enqueued:' || account_id) AS notified
    FROM inserted
    """
).bindparams(bindparam("request", type_=JSONB), bindparam("detail", type_=JSONB))

_LIVE_RUN = text(f"SELECT * FROM runs WHERE dedupe_key = :dedupe_key AND {_LIVE}")


async def _enqueue_one(
    conn: AsyncConnection, new: NewRun, worker_id: str | None
) -> EnqueueResult:
    values: dict[str, Any] = {
        "job": new.job,
        "account_id": new.account_id,
        "instance_id": new.instance_id,
        "dedupe_key": new.dedupe_key,
        "source": new.source,
        "priority": new.priority,
        "expected_seconds": float(new.expected_seconds),
        "request": dict(new.request),
        "max_attempts": new.max_attempts,
        "not_before": new.not_before,
        "detail": {"source": new.source},
        "worker_id": worker_id,
        "channel": NOTIFY_CHANNEL,
    }
    # A concurrent finish of the conflicting run can leave neither an insert
    # nor a live row to return; trying again settles it.
    for _ in range(5):
        row = (await conn.execute(_ENQUEUE, values)).first()
        if row is not None:
            return EnqueueResult(RunRecord.from_row(row), created=True)

        row = (
            await conn.execute(_LIVE_RUN, {"dedupe_key": values["dedupe_key"]})
        ).first()
        if row is not None:
            return EnqueueResult(RunRecord.from_row(row), created=False)

    raise RuntimeError(f"could not enqueue {new.job}: dedupe key kept changing")


# Admission


@dataclass(frozen=True)
class InstanceLimit:
    instance_id: str
    limit: int


@dataclass(frozen=True)
class AccountLimits:
    account_id: str
    limit: int
    instances: tuple[InstanceLimit, ...]


@dataclass(frozen=True)
class Candidate:
    id: int
    instance_id: str
    priority: int
    expected_seconds: float
    age_seconds: float

    def effective_priority(self, aging_seconds: float) -> int:
        return self.priority + int(self.age_seconds // aging_seconds)


@dataclass
class Admission:
    """What one admission pass saw and did, for logs and metrics."""

    account_id: str
    held: dict[str, int] = field(default_factory=dict)
    account_free: int = 0
    claimed: list[RunRecord] = field(default_factory=list)

    @property
    def account_held(self) -> int:
        return sum(self.held.values())


def choose(
    candidates: Sequence[Candidate],
    free: Mapping[str, int],
    held: Mapping[str, int],
    account_free: int,
    backlog: Mapping[str, float],
    aging_seconds: float,
) -> list[Candidate]:
    """Pick the runs to admit, at most ``free[i]`` per instance and
    ``account_free`` in all.

    Higher (aged) priority is served first. Among equals, an instance holding
    nothing gets a slot first (none starves); then each slot goes to the
    instance with the most remaining work (``backlog``: queued and still to
    run in flight), whose drain would end last, until its room is used up.
    Within an instance, the longest expected run goes first.
    """
    per_instance: dict[str, list[Candidate]] = defaultdict(list)
    for candidate in candidates:
        per_instance[candidate.instance_id].append(candidate)

    for queue in per_instance.values():
        queue.sort(
            key=lambda c: (
                -c.effective_priority(aging_seconds),
                -c.expected_seconds,
                c.id,
            )
        )

    slots = {instance: held.get(instance, 0) for instance in per_instance}
    room = {instance: free.get(instance, 0) for instance in per_instance}
    work = {
        instance: backlog.get(instance)
        or sum(c.expected_seconds for c in per_instance[instance])
        for instance in per_instance
    }
    chosen: list[Candidate] = []
    while len(chosen) < account_free:
        best: tuple[int, bool, float] | None = None
        best_instance = ""
        for instance, queue in per_instance.items():
            if not queue or room[instance] <= 0:
                continue

            key = (
                queue[0].effective_priority(aging_seconds),
                slots[instance] == 0,
                work[instance],
            )
            if best is None or key > best:
                best, best_instance = key, instance

        if best is None:
            break

        instance = best_instance
        chosen.append(per_instance[instance].pop(0))
        slots[instance] += 1
        room[instance] -= 1

    return chosen


# Slots held per instance (runs in flight, outside executions) and pauses in
# force, in one round trip: ('held', instance, count) and (scope, key, 0) rows.
_HELD_AND_PAUSED = text(
    """
    SELECT 'held' AS kind, instance_id AS key, count(*) AS held FROM runs
    WHERE account_id = :account_id AND state = ANY(CAST(:slot_states AS text[]))
    GROUP BY instance_id
    UNION ALL
    SELECT 'held', instance_id, count(*) FROM external_executions
    WHERE account_id = :account_id AND in_flight
    GROUP BY instance_id
    UNION ALL
    SELECT scope, key, 0 FROM pauses
    WHERE until > now()
      AND ((scope = 'account' AND key = :account_id)
           OR (scope = 'instance' AND key = ANY(CAST(:instance_ids AS text[]))))
    """
)

# Per instance, the best runs by priority and expected length, and the oldest
# ones (for aging); both index-ordered and limited to the instance's room.
_CANDIDATES = text(
    """
    SELECT c.id, c.instance_id, c.priority, c.expected_seconds,
           extract(epoch FROM now() - c.created_at) AS age_seconds
    FROM unnest(CAST(:instance_ids AS text[]), CAST(:room AS int[]))
         AS f(instance_id, room)
    CROSS JOIN LATERAL (
        SELECT r.id, r.instance_id, r.priority, r.expected_seconds, r.created_at
        FROM runs r
        WHERE r.instance_id = f.instance_id AND r.state = 'queued'
          AND r.not_before <= now()
        ORDER BY r.priority DESC, r.expected_seconds DESC, r.id
        LIMIT f.room
        FOR UPDATE SKIP LOCKED
    ) c
    UNION ALL
    SELECT c.id, c.instance_id, c.priority, c.expected_seconds,
           extract(epoch FROM now() - c.created_at) AS age_seconds
    FROM unnest(CAST(:instance_ids AS text[]), CAST(:room AS int[]))
         AS f(instance_id, room)
    CROSS JOIN LATERAL (
        SELECT r.id, r.instance_id, r.priority, r.expected_seconds, r.created_at
        FROM runs r
        WHERE r.instance_id = f.instance_id AND r.state = 'queued'
          AND r.not_before <= now()
          AND r.created_at < now() - make_interval(secs => :aging_seconds)
        ORDER BY r.created_at, r.id
        LIMIT f.room
        FOR UPDATE SKIP LOCKED
    ) c
    """
)

_CLAIM = text(
    """
    WITH claimed AS (
        UPDATE runs
        SET state = 'submitting',
            lease_owner = :owner,
            lease_expires_at = now() + make_interval(secs => :lease_seconds),
            claimed_at = now(),
            updated_at = now()
        WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'queued'
        RETURNING *
    ), logged AS (
        INSERT INTO events (run_id, from_state, to_state, reason, attempt, detail,
                            worker_id)
        SELECT id, 'queued', 'submitting', 'admitted', attempt + 1,
               jsonb_build_object('instance_held', CAST(:held AS jsonb) -> instance_id,
                                  'account_held', CAST(:account_held AS int)),
               :owner
        FROM claimed
    )
    SELECT * FROM claimed ORDER BY id
    """
).bindparams(bindparam("held", type_=JSONB))

_LOCK_ACCOUNT = text("SELECT pg_advisory_xact_lock(:cls, hashtext(:account_id))")


async def admit(
    db: Database,
    account: AccountLimits,
    *,
    owner: str,
    lease_seconds: float,
    max_claims: int,
    backlog: Mapping[str, float] | None = None,
    aging_seconds: float = 3600.0,
) -> Admission:
    """Claim runs of ``account`` into free slots; at most ``max_claims``."""
    admission = Admission(account.account_id)
    limits = {i.instance_id: i.limit for i in account.instances}
    if max_claims <= 0 or not limits:
        return admission

    async with db.begin() as conn:
        await conn.execute(
            _LOCK_ACCOUNT,
            {"cls": ADMISSION_LOCK_CLASS, "account_id": account.account_id},
        )
        held: dict[str, int] = defaultdict(int)
        paused_keys: set[tuple[str, str]] = set()
        params = {
            "account_id": account.account_id,
            "slot_states": SLOT_STATE_VALUES,
            "instance_ids": list(limits),
        }
        for kind, key, count in await conn.execute(_HELD_AND_PAUSED, params):
            if kind == "held":
                held[key] += count
            else:
                paused_keys.add((kind, key))

        admission.held = dict(held)
        admission.account_free = max(0, account.limit - sum(held.values()))
        if (
            admission.account_free == 0
            or ("account", account.account_id) in paused_keys
        ):
            return admission

        room = {
            instance_id: min(limit - held[instance_id], admission.account_free)
            for instance_id, limit in limits.items()
            if limit > held[instance_id]
            and ("instance", instance_id) not in paused_keys
        }
        if not room:
            return admission

        query = {
            "instance_ids": list(room),
            "room": list(room.values()),
            "aging_seconds": aging_seconds,
        }
        rows = await conn.execute(_CANDIDATES, query)
        candidates = {
            row.id: Candidate(
                row.id,
                row.instance_id,
                row.priority,
                row.expected_seconds,
                float(row.age_seconds),
            )
            for row in rows
        }
        chosen = choose(
            list(candidates.values()),
            room,
            held,
            min(admission.account_free, max_claims),
            backlog or {},
            aging_seconds,
        )
        if not chosen:
            return admission

        claimed = await conn.execute(
            _CLAIM,
            {
                "ids": [c.id for c in chosen],
                "owner": owner,
                "lease_seconds": lease_seconds,
                "held": dict(held),
                "account_held": sum(held.values()),
            },
        )
        admission.claimed = [RunRecord.from_row(row) for row in claimed]

    return admission


async def renew_submission_leases(
    db: Database,
    owner: str,
    lease_seconds: float,
    run_ids: Sequence[int] | None = None,
) -> int:
    """Keep this process's `submitting` leases alive while it works on them.

    With ``run_ids``, only those: a run whose submission ended without being
    recorded (the database went away) must let its lease expire, so that
    recovery looks the execution up.
    """
    async with db.begin() as conn:
        result = await conn.execute(
            text(
                """
                UPDATE runs
                SET lease_expires_at = now() + make_interval(secs => :lease_seconds)
                WHERE lease_owner = :owner AND state = 'submitting'
                  AND (CAST(:ids AS bigint[]) IS NULL
                       OR id = ANY(CAST(:ids AS bigint[])))
                """
            ),
            {
                "owner": owner,
                "lease_seconds": lease_seconds,
                "ids": None if run_ids is None else list(run_ids),
            },
        )

    return int(result.rowcount)


async def claim_expired_submissions(
    db: Database, owner: str, lease_seconds: float, limit: int = 50
) -> list[tuple[RunRecord, str | None]]:
    """Take over `submitting` runs whose lease expired: (run, previous owner).

    The update checks the lease it found is still the one it replaces, so a
    run its owner finished meanwhile is left alone.
    """
    async with db.begin() as conn:
        rows = await conn.execute(
            text(
                """
                WITH expired AS (
                    SELECT id, lease_owner FROM runs
                    WHERE state = 'submitting' AND lease_expires_at < now()
                    ORDER BY lease_expires_at
                    LIMIT :limit
                    FOR UPDATE SKIP LOCKED
                ), taken AS (
                    UPDATE runs r
                    SET lease_owner = :owner,
                        lease_expires_at =
                            now() + make_interval(secs => :lease_seconds),
                        updated_at = now()
                    FROM expired e
                    WHERE r.id = e.id AND r.state = 'submitting'
                      AND r.lease_owner IS NOT DISTINCT FROM e.lease_owner
                    RETURNING r.*, e.lease_owner AS previous_owner
                ), logged AS (
                    INSERT INTO events (run_id, from_state, to_state, reason, attempt,
                                        detail, worker_id)
                    SELECT id, 'submitting', 'submitting', 'lease_expired', attempt + 1,
                           jsonb_build_object('previous_owner', previous_owner), :owner
                    FROM taken
                )
                SELECT * FROM taken
                """
            ),
            {"owner": owner, "lease_seconds": lease_seconds, "limit": limit},
        )
        return [(RunRecord.from_row(row), row.previous_owner) for row in rows]


async def set_pause(
    conn: AsyncConnection, scope: str, key: str, seconds: float, reason: str
) -> None:
    """Hold admission for an instance or account; a longer pause wins."""
    until = func.now() + func.make_interval(0, 0, 0, 0, 0, 0, seconds)
    statement = pg_insert(pauses).values(
        scope=scope, key=key, until=until, reason=reason
    )
    await conn.execute(
        statement.on_conflict_do_update(
            index_elements=["scope", "key"],
            set_={
                "until": func.greatest(pauses.c.until, statement.excluded.until),
                "reason": statement.excluded.reason,
            },
        )
    )


async def active_pauses(db: Database) -> dict[tuple[str, str], datetime]:
    async with db.connect() as conn:
        rows = await conn.execute(
            select(pauses.c.scope, pauses.c.key, pauses.c.until).where(
                pauses.c.until > func.now()
            )
        )
        return {(scope, key): until for scope, key, until in rows}


async def notify(db: Database, payload: str) -> None:
    async with db.begin() as conn:
        await conn.execute(
            text("SELECT pg_notify(:channel, :payload)"),
            {"channel": NOTIFY_CHANNEL, "payload": payload},
        )
