from __future__ import annotations

from collections import Counter

from scheduler.store.queue import Candidate, choose

HOUR = 3600.0


def cands(
    instance: str,
    n: int,
    *,
    start: int = 0,
    priority: int = 0,
    expected: float = 1200.0,
    age: float = 0.0,
) -> list[Candidate]:
    return [Candidate(start + i, instance, priority, expected, age) for i in range(n)]


def test_instance_with_more_work_gets_more_slots() -> None:
    """When the account binds, slots follow remaining work, not an even split."""
    candidates = cands("big", 10) + cands("small", 10, start=100)
    chosen = choose(
        candidates,
        free={"big": 10, "small": 10},
        held={"big": 2, "small": 2},
        account_free=8,
        backlog={"big": 90 * 1200.0, "small": 10 * 1200.0},
        aging_seconds=HOUR,
    )
    share = Counter(c.instance_id for c in chosen)
    assert share["big"] > share["small"]
    assert sum(share.values()) == 8


def test_instance_holding_nothing_is_served_first() -> None:
    """An instance with no slot gets one before a busier one gets more."""
    chosen = choose(
        cands("busy", 5) + cands("idle", 1, start=100),
        free={"busy": 5, "idle": 5},
        held={"busy": 5, "idle": 0},
        account_free=1,
        backlog={"busy": 10**6, "idle": 1.0},
        aging_seconds=HOUR,
    )
    assert [c.instance_id for c in chosen] == ["idle"]


def test_priority_comes_first() -> None:
    """A higher priority run is admitted before any amount of backlog."""
    chosen = choose(
        cands("a", 3, priority=0) + cands("b", 1, start=100, priority=5),
        free={"a": 3, "b": 3},
        held={},
        account_free=1,
        backlog={"a": 10**6, "b": 1.0},
        aging_seconds=HOUR,
    )
    assert [c.id for c in chosen] == [100]


def test_longest_expected_run_first_within_an_instance() -> None:
    """Within an instance the run expected to take longest starts first."""
    runs = [
        Candidate(1, "a", 0, 300.0, 0.0),
        Candidate(2, "a", 0, 3600.0, 0.0),
        Candidate(3, "a", 0, 1200.0, 0.0),
    ]
    chosen = choose(runs, {"a": 2}, {}, 2, {}, HOUR)
    assert [c.id for c in chosen] == [2, 3]


def test_age_lifts_priority() -> None:
    """A run that waited long enough outranks newer higher-priority runs."""
    old = Candidate(1, "a", 0, 60.0, 5 * HOUR)
    new = Candidate(2, "a", 3, 60.0, 0.0)
    chosen = choose([new, old], {"a": 1}, {}, 1, {}, HOUR)
    assert [c.id for c in chosen] == [1]


def test_limits_are_respected() -> None:
    """Never more than an instance's room nor the account's free slots."""
    chosen = choose(
        cands("a", 10) + cands("b", 10, start=100),
        free={"a": 3, "b": 10},
        held={},
        account_free=5,
        backlog={"a": 10**6, "b": 1.0},
        aging_seconds=HOUR,
    )
    share = Counter(c.instance_id for c in chosen)
    assert share["a"] == 3
    assert sum(share.values()) == 5


def test_instance_with_most_remaining_work_fills_its_room_first() -> None:
    """The drain that would end last is kept at its limit; the rest share what
    is left, however many slots each already holds."""
    chosen = choose(
        cands("critical", 10) + cands("light", 10, start=100),
        free={"critical": 4, "light": 10},
        held={"critical": 6, "light": 1},
        account_free=5,
        backlog={"critical": 200 * 1200.0, "light": 50 * 1200.0},
        aging_seconds=HOUR,
    )
    assert Counter(c.instance_id for c in chosen) == {"critical": 4, "light": 1}
