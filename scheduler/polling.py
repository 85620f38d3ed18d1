"""When to poll an instance next.

Each list call costs an AMC request; each minute an execution sits finished
but unnoticed is a slot wasted. So the tick follows the chance that
something finished: every in-flight execution has a log-normal run time,
learned per job from history (median and spread), and the next poll comes
when the expected number of executions that finished since the last poll
reaches a threshold. With work waiting for the slots the threshold is low
(poll soon after a likely finish); with nothing waiting it is high (several
finishes, or most of the runs in flight), so idle instances are polled
rarely. The result is clamped to the configured bounds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

URGENT_THRESHOLD = 0.5
IDLE_THRESHOLD = 3.0
DEFAULT_SIGMA = 0.5


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


def next_poll_delay(
    runs: Sequence[InFlight],
    *,
    minimum: float,
    maximum: float,
    urgent: bool,
) -> float:
    """Seconds until the next list call of an instance with ``runs`` in flight."""
    if not runs:
        return maximum

    # A handful of runs can never add up to the idle threshold: then wait
    # until most of them have likely finished.
    threshold = min(URGENT_THRESHOLD if urgent else IDLE_THRESHOLD, 0.8 * len(runs))
    if expected_finishes(runs, minimum) >= threshold:
        return minimum

    if expected_finishes(runs, maximum) < threshold:
        return maximum

    low, high = minimum, maximum
    for _ in range(30):
        middle = (low + high) / 2
        if expected_finishes(runs, middle) >= threshold:
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
