"""When to poll an instance next.

Each list call costs an AMC request; each second an execution sits finished
but unnoticed is a slot-second wasted while runs wait for it. Every
in-flight execution has a log-normal run time, learned per job from history
(median and spread), so the slot-seconds expected to have gone idle since the
last poll can be computed; the next poll comes when they reach
``dispatcher.poll_waste``. Polls thus gather where finishes are likely and
thin out where they are not. With nothing waiting for the slots an idle slot
costs nothing, and the allowance is ``IDLE_FACTOR`` times larger. The result
is clamped to the configured bounds.

The trade-off is set by ``poll_waste``: with finishes arriving at random at
rate r per instance, polling every d seconds wastes about r d^2 / 2
slot-seconds per poll, so a waste allowance w means d = sqrt(2 w / r), a mean
delay of d / 2 and 1 / (r d) list calls per finish. Predictable run times do
better than that; docs/benchmarks.md measures it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

IDLE_FACTOR = 10.0
DEFAULT_SIGMA = 0.5
_STEPS = 16


@dataclass(frozen=True)
class DurationModel:
    """A log-normal run time: ``median`` seconds, ``sigma`` of its logarithm."""

    median: float
    sigma: float = DEFAULT_SIGMA

    def survival(self, elapsed: float) -> float:
        """The chance the execution is still running after ``elapsed`` seconds."""
        if elapsed <= 0:
            return 1.0

        sigma = max(self.sigma, 0.05)
        z = (math.log(elapsed) - math.log(max(self.median, 1.0))) / sigma
        return 0.5 * math.erfc(z / math.sqrt(2))

    def finish_within(self, elapsed: float, horizon: float) -> float:
        """The chance it finishes in the next ``horizon`` s, given it runs now."""
        alive = self.survival(elapsed)
        if alive <= 1e-12:
            # Far past anything the model expected: assume a steady hazard of
            # one finish per median, so an overdue run is still watched.
            return 1.0 - math.exp(-horizon / max(self.median, 1.0))

        return max(0.0, (alive - self.survival(elapsed + horizon)) / alive)


@dataclass(frozen=True)
class InFlight:
    elapsed: float
    model: DurationModel


def expected_finishes(runs: Sequence[InFlight], horizon: float) -> float:
    return sum(run.model.finish_within(run.elapsed, horizon) for run in runs)


def expected_idle(runs: Sequence[InFlight], horizon: float) -> float:
    """Slot-seconds expected to sit finished but unnoticed ``horizon`` s from now.

    For each run, the integral over the next ``horizon`` seconds of the
    chance that it has finished by then (Simpson's rule).
    """
    if horizon <= 0 or not runs:
        return 0.0

    step = horizon / _STEPS
    total = 0.0
    for index in range(_STEPS + 1):
        weight = 1 if index in (0, _STEPS) else (4 if index % 2 else 2)
        total += weight * expected_finishes(runs, index * step)

    return total * step / 3


def next_poll_delay(
    runs: Sequence[InFlight],
    *,
    minimum: float,
    maximum: float,
    urgent: bool,
    waste: float,
) -> float:
    """Seconds until the next list call of an instance with ``runs`` in flight."""
    if not runs:
        return maximum

    allowance = waste if urgent else waste * IDLE_FACTOR
    if expected_idle(runs, minimum) >= allowance:
        return minimum

    if expected_idle(runs, maximum) < allowance:
        return maximum

    low, high = minimum, maximum
    for _ in range(30):
        middle = (low + high) / 2
        if expected_idle(runs, middle) >= allowance:
            high = middle
        else:
            low = middle

        if high - low < 0.01 * minimum:
            break

    return high


def fit(durations: Sequence[float]) -> DurationModel | None:
    """A model from observed run times; None with too few to trust."""
    positive = sorted(d for d in durations if d > 0)
    if len(positive) < 3:
        return None

    logs = [math.log(d) for d in positive]
    mean = sum(logs) / len(logs)
    spread = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
    middle = len(positive) // 2
    median = (
        positive[middle]
        if len(positive) % 2
        else (positive[middle - 1] + positive[middle]) / 2
    )
    return DurationModel(median=median, sigma=max(spread, 0.05))
