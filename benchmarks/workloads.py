"""Seeded workloads: runs over accounts and instances with log-normal run times.

Run times belong to jobs: each job has its own typical duration (log-normal
around the workload's median) and each run adds a little noise of its own, so
a scheduler that learns from history can expect what a run will take. Every
run's duration is fixed in advance, so different strategies drain the same
work.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from datetime import datetime, timedelta

WINDOW_ORIGIN = datetime(2025, 1, 1)
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class Instance:
    id: str
    account: str
    limit: int = 10


@dataclass(frozen=True)
class Account:
    id: str
    marketplace_id: str
    limit: int
    instances: tuple[Instance, ...]


@dataclass(frozen=True)
class Job:
    name: str
    instance: str
    workflow_id: str
    median: float


@dataclass(frozen=True)
class PlannedRun:
    job: str
    account: str
    instance: str
    workflow_id: str
    window_start: str
    window_end: str
    duration: float


@dataclass(frozen=True)
class Workload:
    name: str
    accounts: tuple[Account, ...]
    jobs: tuple[Job, ...]
    runs: tuple[PlannedRun, ...]
    median: float

    def instances(self) -> list[Instance]:
        return [i for a in self.accounts for i in a.instances]

    def lower_bound(self) -> float:
        """No schedule can finish sooner: each limit's work over the limit,
        and the longest single run."""
        work_instance: dict[str, float] = {}
        work_account: dict[str, float] = {}
        for run in self.runs:
            work_instance[run.instance] = (
                work_instance.get(run.instance, 0) + run.duration
            )
            work_account[run.account] = work_account.get(run.account, 0) + run.duration

        limits = {i.id: i.limit for i in self.instances()}
        bounds = [work / limits[i] for i, work in work_instance.items()]
        bounds += [
            work_account[a.id] / a.limit for a in self.accounts if a.id in work_account
        ]
        bounds.append(max(run.duration for run in self.runs))
        return max(bounds)

    def binding(self) -> str:
        """The account whose limit sets the highest bound."""
        account = max(
            self.accounts,
            key=lambda a: (
                sum(r.duration for r in self.runs if r.account == a.id) / a.limit
            ),
        )
        return account.id


def generate(
    name: str,
    account_shapes: list[tuple[str, int, int]],
    *,
    runs: int,
    median: float,
    seed: int,
    jobs_per_instance: int = 3,
    job_sigma: float = 0.5,
    run_sigma: float = 0.15,
    spread_sigma: float = 0.15,
    spread: float = 0.2,
    clip: float = 4.0,
) -> Workload:
    """``account_shapes``: (account id, number of instances, account limit).

    About ``runs`` runs in all: each instance gets its share of the work, then
    runs are added until it is reached.
    """
    rng = random.Random(seed)
    accounts = []
    for index, (account_id, count, limit) in enumerate(account_shapes):
        instances = tuple(
            Instance(f"amc{index}{n:02d}", account_id) for n in range(count)
        )
        accounts.append(Account(account_id, "ATVPDKIKX0DER", limit, instances))

    instances = [i for a in accounts for i in a.instances]
    jobs = []
    for instance in instances:
        for n in range(jobs_per_instance):
            typical = median * math.exp(rng.gauss(0, job_sigma))
            typical = min(max(typical, median / clip), median * clip)
            jobs.append(
                Job(
                    f"{instance.id}-j{n}", instance.id, f"wf-{instance.id}-{n}", typical
                )
            )

    # Instances carry unequal amounts of work (within ±spread of the mean), so
    # sharing an account's slots evenly is not the fastest way to drain it.
    weights = [
        min(max(math.exp(rng.gauss(0, spread_sigma)), 1 - spread), 1 + spread)
        for _ in instances
    ]
    noise = math.exp(run_sigma**2 / 2)
    mean_run = noise * sum(j.median for j in jobs) / len(jobs)
    per_instance = runs * mean_run / len(instances)
    account_of = {i.id: i.account for i in instances}
    planned: list[PlannedRun] = []
    for instance, weight in zip(instances, weights, strict=True):
        own = [j for j in jobs if j.instance == instance.id]
        work, n = 0.0, 0
        # A little over the share, so that trimming to ``runs`` stays fair.
        while work < 1.03 * per_instance * weight:
            job = own[n % len(own)]
            start = WINDOW_ORIGIN + timedelta(days=n // len(own))
            duration = min(
                job.median * math.exp(rng.gauss(0, run_sigma)), median * clip
            )
            planned.append(
                PlannedRun(
                    job=job.name,
                    account=account_of[instance.id],
                    instance=instance.id,
                    workflow_id=job.workflow_id,
                    window_start=start.strftime(TIME_FORMAT),
                    window_end=(start + timedelta(days=1)).strftime(TIME_FORMAT),
                    duration=round(duration, 3),
                )
            )
            work += duration
            n += 1

    # Exactly ``runs``: drop the surplus at random.
    rng.shuffle(planned)
    planned = planned[:runs]
    return Workload(name, tuple(accounts), tuple(jobs), tuple(planned), median)


def standard(median: float = 1200.0, seed: int = 1, runs: int = 3000) -> Workload:
    """3 accounts, 30 instances (one account of 25 whose 200-slot limit binds),
    3,000 runs, median 20 simulated minutes, clipped at four times the median."""
    return generate(
        f"standard-{int(median // 60)}m",
        [("ENTITYBENCHA", 25, 200), ("ENTITYBENCHB", 3, 200), ("ENTITYBENCHC", 2, 200)],
        runs=runs,
        median=median,
        seed=seed,
    )


def wide(
    accounts: int = 10, instances: int = 10, runs: int = 10_000, seed: int = 2
) -> Workload:
    """Many accounts of many instances, for load and scale."""
    shapes = [(f"ENTITYWIDE{n:02d}", instances, 200) for n in range(accounts)]
    return generate("wide", shapes, runs=runs, median=1200.0, seed=seed)
