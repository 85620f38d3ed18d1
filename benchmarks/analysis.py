"""What a drain did, from the simulator's timeline, in simulated seconds."""

from __future__ import annotations

import statistics
from collections import defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .workloads import Workload


@dataclass(frozen=True)
class Interval:
    instance: str
    account: str
    start: float
    end: float


@dataclass
class Report:
    strategy: str
    makespan: float
    lower_bound: float
    utilisation: float
    utilisation_binding: float
    requests_per_run: dict[str, float]
    limit_rejections: int
    refill_median: float
    refill_p95: float
    duplicates: int
    runs: int

    @property
    def ratio(self) -> float:
        return self.makespan / self.lower_bound

    @property
    def total_requests_per_run(self) -> float:
        return sum(v for k, v in self.requests_per_run.items() if k != "token")


def intervals(
    executions: Iterable[dict[str, Any]], t0: float, speed: float
) -> list[Interval]:
    return [
        Interval(
            e["instance_id"],
            e["account_id"],
            (e["created_at"] - t0) * speed,
            (e["ended_at"] - t0) * speed,
        )
        for e in executions
        if e.get("origin", "api") == "api" and e.get("ended_at") is not None
    ]


def _sweep(
    spans: Sequence[Interval], account_limit: int, limits: dict[str, int]
) -> tuple[float, float, list[float]]:
    """Slot-seconds used and usable by waiting runs, and refill waits.

    At each moment the waiting instances (those with a create still to come)
    could use ``min(account free for them, their own limits)`` slots; the
    used ones are theirs in flight. A slot freed while waiting runs could take
    it joins a pool: the account's when the account's limit binds (it was
    full, or its waiting instances could use more slots than it has), so that
    the slot counts as refilled by the next create on any instance; else the
    instance's own. The next create that may use a pool's slot takes the
    oldest.
    """
    last_create: dict[str, float] = {}
    events: list[tuple[float, int, str]] = []
    for span in spans:
        last_create[span.instance] = max(
            last_create.get(span.instance, 0.0), span.start
        )
        events.append((span.start, 1, span.instance))
        events.append((span.end, 0, span.instance))

    # Ends before starts at the same moment; a waiting end after its create.
    events += [(moment, 2, instance) for instance, moment in last_create.items()]
    events.sort()
    busy: dict[str, int] = defaultdict(int)
    waiting = set(last_create)
    used_total = usable_total = 0.0
    previous = events[0][0] if events else 0.0
    pools: dict[str, deque[float]] = defaultdict(deque)
    waits: list[float] = []
    for moment, kind, instance in events:
        if waiting and moment > previous:
            outside = sum(n for i, n in busy.items() if i not in waiting)
            usable = min(account_limit - outside, sum(limits[i] for i in waiting))
            used = sum(busy[i] for i in waiting)
            usable_total += usable * (moment - previous)
            used_total += min(used, usable) * (moment - previous)

        previous = moment
        if kind == 0:
            outside = sum(n for i, n in busy.items() if i not in waiting)
            binds = (
                sum(busy.values()) >= account_limit
                or sum(limits[i] for i in waiting) > account_limit - outside
            )
            busy[instance] -= 1
            if waiting and binds:
                pools["account"].append(moment)
            elif instance in waiting:
                pools[instance].append(moment)
        elif kind == 1:
            busy[instance] += 1
            for pool in (pools[instance], pools["account"]):
                if pool:
                    waits.append(moment - pool.popleft())
                    break
        else:
            waiting.discard(instance)

    return used_total, usable_total, waits


def analyse(
    strategy: str,
    workload: Workload,
    executions: list[dict[str, Any]],
    stats: dict[str, Any],
    t0: float,
    speed: float,
) -> Report:
    spans = intervals(executions, t0, speed)
    makespan = max(s.end for s in spans)
    binding = workload.binding()
    by_account: dict[str, list[Interval]] = defaultdict(list)
    for span in spans:
        by_account[span.account].append(span)

    limits = {i.id: i.limit for i in workload.instances()}
    used = usable = 0.0
    refills: list[float] = []
    binding_utilisation = 1.0
    for account in workload.accounts:
        group = by_account[account.id]
        if not group:
            continue

        account_used, account_usable, waits = _sweep(group, account.limit, limits)
        used += account_used
        usable += account_usable
        refills += waits
        if account.id == binding and account_usable:
            binding_utilisation = account_used / account_usable

    runs = len(workload.runs)
    requests = {
        kind: count / runs for kind, count in stats["requests"].items() if count
    }
    ordered = sorted(refills)
    return Report(
        strategy=strategy,
        makespan=makespan,
        lower_bound=workload.lower_bound(),
        utilisation=used / usable if usable else 1.0,
        utilisation_binding=binding_utilisation,
        requests_per_run=requests,
        limit_rejections=int(stats["rejected_creates"]["limit"]),
        refill_median=statistics.median(ordered) if ordered else 0.0,
        refill_p95=ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0,
        duplicates=int(stats["duplicates"]),
        runs=len(spans),
    )


def slots_over_time(
    spans: Sequence[Interval], account: str, step: float
) -> tuple[list[float], list[int]]:
    """Executions in flight in ``account``, sampled every ``step`` seconds."""
    chosen = [s for s in spans if s.account == account]
    end = max(s.end for s in chosen)
    times = [n * step for n in range(int(end / step) + 1)]
    counts = [sum(1 for s in chosen if s.start <= t < s.end) for t in times]
    return times, counts
