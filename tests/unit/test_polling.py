from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.polling import (
    DEFAULT_SIGMA,
    IDLE_FACTOR,
    DurationModel,
    InFlight,
    expected_finishes,
    expected_idle,
    fit,
    next_poll_delay,
)

MINIMUM, MAXIMUM = 15.0, 300.0
WASTE = 30.0

models = st.builds(
    DurationModel,
    median=st.floats(0.0, 1e5, allow_nan=False),
    sigma=st.floats(0.0, 3.0, allow_nan=False),
)
elapsed_times = st.floats(-10.0, 1e6, allow_nan=False)
horizons = st.floats(0.0, 1e5, allow_nan=False)
in_flight = st.builds(InFlight, elapsed=st.floats(0.0, 2e5), model=models)
run_lists = st.lists(in_flight, max_size=12)
bounds = st.tuples(st.floats(1.0, 60.0), st.floats(0.0, 3600.0)).map(
    lambda pair: (pair[0], pair[0] + pair[1])
)


def delay(
    runs: list[InFlight],
    *,
    urgent: bool,
    limits: tuple[float, float],
    waste: float = WASTE,
) -> float:
    return next_poll_delay(
        runs, minimum=limits[0], maximum=limits[1], urgent=urgent, waste=waste
    )


def allowance(urgent: bool, waste: float = WASTE) -> float:
    return waste if urgent else waste * IDLE_FACTOR


# DurationModel


def test_survival_is_one_before_the_start_and_half_at_the_median() -> None:
    """A run has not finished before it starts and is even odds at its median."""
    model = DurationModel(median=1200.0, sigma=0.5)
    assert model.survival(0.0) == 1.0
    assert model.survival(-5.0) == 1.0
    assert model.survival(1200.0) == pytest.approx(0.5)
    assert model.survival(1200.0 * math.exp(0.5)) == pytest.approx(0.158655, abs=1e-5)
    assert model.survival(1e9) < 1e-12


def test_survival_floors_degenerate_models() -> None:
    """A zero spread or a sub-second median is read with the documented floors."""
    assert DurationModel(1200.0, 0.0).survival(1300.0) == pytest.approx(
        DurationModel(1200.0, 0.05).survival(1300.0)
    )
    assert DurationModel(0.0).survival(2.0) == DurationModel(1.0).survival(2.0)
    assert DurationModel(1200.0).sigma == DEFAULT_SIGMA


@given(model=models, first=elapsed_times, second=elapsed_times)
def test_survival_is_a_probability_that_falls_with_time(
    model: DurationModel, first: float, second: float
) -> None:
    """Survival lies in [0, 1] and never rises as the run goes on."""
    early, late = sorted((first, second))
    assert 0.0 <= model.survival(late) <= model.survival(early) <= 1.0


@given(model=models, elapsed=elapsed_times, first=horizons, second=horizons)
def test_finish_within_is_a_probability_that_grows_with_the_horizon(
    model: DurationModel, elapsed: float, first: float, second: float
) -> None:
    """The chance to finish within a horizon is in [0, 1] and grows with it."""
    short, long = sorted((first, second))
    low = model.finish_within(elapsed, short)
    high = model.finish_within(elapsed, long)
    assert 0.0 <= low <= high <= 1.0
    assert model.finish_within(elapsed, 0.0) == 0.0


@given(model=models, elapsed=st.floats(0.0, 1e5), horizon=horizons)
def test_finish_within_is_the_conditional_chance(
    model: DurationModel, elapsed: float, horizon: float
) -> None:
    """While the model expects the run alive, it is P(finish by t+h | alive at t)."""
    alive = model.survival(elapsed)
    if alive > 1e-6:
        expected = (alive - model.survival(elapsed + horizon)) / alive
        assert model.finish_within(elapsed, horizon) == pytest.approx(
            expected, abs=1e-9
        )


def test_overdue_run_is_still_expected_to_finish() -> None:
    """Far past its expected run time a run gets one finish per median, not zero."""
    model = DurationModel(median=600.0, sigma=0.3)
    elapsed = 600.0 * math.exp(0.3 * 10)  # ten sigmas out
    assert model.survival(elapsed) <= 1e-12
    for horizon in (15.0, 600.0, 6000.0):
        assert model.finish_within(elapsed, horizon) == pytest.approx(
            1.0 - math.exp(-horizon / 600.0)
        )

    assert model.finish_within(elapsed, 15.0) > 0.02


def test_expected_finishes_adds_up_the_runs() -> None:
    """The expected number of finishes is the sum of each run's chance."""
    fast, slow = DurationModel(60.0), DurationModel(3600.0)
    runs = [InFlight(60.0, fast), InFlight(10.0, slow), InFlight(5000.0, slow)]
    total = sum(run.model.finish_within(run.elapsed, 120.0) for run in runs)
    assert expected_finishes(runs, 120.0) == pytest.approx(total)
    assert expected_finishes([], 120.0) == 0.0
    assert 0.0 < expected_finishes(runs, 120.0) < len(runs)


# next_poll_delay


def test_no_runs_polls_at_the_maximum() -> None:
    """An instance with nothing in flight is polled as rarely as allowed."""
    for urgent in (True, False):
        assert delay([], urgent=urgent, limits=(MINIMUM, MAXIMUM)) == MAXIMUM


def test_expected_idle_integrates_the_finish_chances() -> None:
    """Idle slot-seconds: the integral of the chance each run has finished."""
    sure = DurationModel(median=20.0, sigma=0.05)
    # Far past its median: the fallback, a steady hazard of one finish per 20 s.
    overdue = [InFlight(20000.0, sure)]
    assert expected_idle(overdue, 100.0) == pytest.approx(
        100.0 - 20.0 * (1 - math.exp(-5.0)), rel=0.01
    )
    fresh = [InFlight(0.0, DurationModel(median=7200.0, sigma=0.2))]
    assert expected_idle(fresh, 300.0) == pytest.approx(0.0, abs=1e-6)
    assert expected_idle(overdue * 3, 50.0) == pytest.approx(
        3 * expected_idle(overdue, 50.0)
    )


def test_full_instance_at_its_medians_polls_soon_when_urgent() -> None:
    """Ten runs at their medians with work waiting: polled as the idle time adds up."""
    model = DurationModel(median=1200.0, sigma=0.5)
    runs = [InFlight(1200.0, model)] * 10
    urgent = delay(runs, urgent=True, limits=(MINIMUM, MAXIMUM))
    idle = delay(runs, urgent=False, limits=(MINIMUM, MAXIMUM))
    # Finishes at a near-steady rate r: idle time r * d^2 / 2 reaches the allowance.
    rate = 10 * model.finish_within(1200.0, 1.0)
    assert urgent == pytest.approx(math.sqrt(2 * WASTE / rate), rel=0.1)
    assert idle >= 2 * urgent


def test_run_near_its_median_polls_sooner_than_a_fresh_one() -> None:
    """A minute-long run at its median with work waiting is polled within ticks."""
    model = DurationModel(median=60.0, sigma=0.5)
    fresh = delay([InFlight(0.0, model)], urgent=True, limits=(MINIMUM, MAXIMUM))
    due = delay([InFlight(60.0, model)], urgent=True, limits=(MINIMUM, MAXIMUM))
    assert MINIMUM <= due <= 4 * MINIMUM
    assert due < fresh


def test_a_bigger_allowance_polls_later() -> None:
    """poll_waste trades requests for refill time: more allowance, later polls."""
    model = DurationModel(median=1200.0, sigma=0.3)
    runs = [InFlight(900.0 + 60 * n, model) for n in range(8)]
    delays = [
        delay(runs, urgent=True, limits=(1.0, 3600.0), waste=w) for w in (5, 30, 120)
    ]
    assert delays == sorted(delays)
    assert delays[0] < delays[-1]


def test_fresh_runs_wait_for_the_maximum() -> None:
    """Runs that just started and typically take hours are not polled early."""
    runs = [InFlight(0.0, DurationModel(median=7200.0, sigma=0.3))] * 10
    assert delay(runs, urgent=True, limits=(MINIMUM, MAXIMUM)) == MAXIMUM


@given(runs=run_lists, limits=bounds, urgent=st.booleans())
def test_delay_stays_within_bounds(
    runs: list[InFlight], limits: tuple[float, float], urgent: bool
) -> None:
    """The delay is never below the minimum nor above the maximum."""
    assert limits[0] <= delay(runs, urgent=urgent, limits=limits) <= limits[1]


@given(runs=run_lists, limits=bounds)
def test_urgent_polls_no_later_than_idle(
    runs: list[InFlight], limits: tuple[float, float]
) -> None:
    """With work waiting an instance is polled no later than the same one idle."""
    assert delay(runs, urgent=True, limits=limits) <= delay(
        runs, urgent=False, limits=limits
    )


@given(runs=run_lists, extra=in_flight, limits=bounds, urgent=st.booleans())
def test_more_runs_never_poll_later(
    runs: list[InFlight],
    extra: InFlight,
    limits: tuple[float, float],
    urgent: bool,
) -> None:
    """Another run in flight never delays the poll: idle time only adds up."""
    before = delay(runs, urgent=urgent, limits=limits)
    assert delay([*runs, extra], urgent=urgent, limits=limits) <= before * (1 + 1e-9)


@settings(max_examples=150)
@given(runs=run_lists.filter(bool), limits=bounds, urgent=st.booleans())
def test_delay_is_when_the_idle_time_reaches_the_allowance(
    runs: list[InFlight], limits: tuple[float, float], urgent: bool
) -> None:
    """Inside the bounds the delay is where expected idle time crosses the allowance."""
    minimum, maximum = limits
    wait = delay(runs, urgent=urgent, limits=limits)
    target = allowance(urgent)
    if wait < maximum:
        assert expected_idle(runs, wait) >= target

    if wait > minimum:
        assert expected_idle(runs, wait - 0.011 * minimum) < target


# fit


@pytest.mark.parametrize(
    "durations", [[], [600.0], [600.0, 700.0], [0.0, -5.0, 600.0, 700.0]]
)
def test_fit_needs_three_positive_durations(durations: list[float]) -> None:
    """Fewer than three positive durations are too few to trust."""
    assert fit(durations) is None


def test_fit_takes_the_median_of_positive_durations() -> None:
    """The median ignores non-positive durations and averages the middle pair."""
    odd = fit([300.0, 0.0, 100.0, 200.0])
    even = fit([400.0, 100.0, 300.0, 200.0])
    assert odd is not None
    assert even is not None
    assert odd.median == 200.0
    assert even.median == 250.0


def test_fit_floors_the_spread_of_identical_durations() -> None:
    """Identical durations give the minimum spread, not zero."""
    model = fit([900.0] * 5)
    assert model == DurationModel(median=900.0, sigma=0.05)


@pytest.mark.parametrize(
    ("median", "sigma", "seed"),
    [(1200.0, 0.5, 1), (300.0, 0.2, 2), (5400.0, 1.0, 3), (60.0, 0.8, 4)],
)
def test_fit_recovers_a_log_normal(median: float, sigma: float, seed: int) -> None:
    """Samples of a known log-normal give back its median and spread within 10%."""
    rng = random.Random(seed)
    samples = [rng.lognormvariate(math.log(median), sigma) for _ in range(400)]
    model = fit(samples)
    assert model is not None
    assert model.median == pytest.approx(median, rel=0.1)
    assert model.sigma == pytest.approx(sigma, rel=0.1)


@given(
    durations=st.lists(st.floats(1.0, 1e5), min_size=3, max_size=40),
    scale=st.floats(0.1, 100.0),
)
def test_fit_scales_with_the_durations(durations: list[float], scale: float) -> None:
    """Scaling every duration scales the median and leaves the spread alone."""
    model = fit(durations)
    scaled = fit([d * scale for d in durations])
    assert model is not None
    assert scaled is not None
    assert min(durations) <= model.median <= max(durations)
    assert model.sigma >= 0.05
    assert scaled.median == pytest.approx(model.median * scale, rel=1e-9)
    assert scaled.sigma == pytest.approx(model.sigma, rel=1e-6, abs=1e-9)
