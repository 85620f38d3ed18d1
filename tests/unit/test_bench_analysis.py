"""The drain benchmark's accounting of slots, on timelines worked out by hand."""

from __future__ import annotations

import pytest

from benchmarks.analysis import Interval, _sweep

LIMITS = {"a": 1, "b": 1}


def spans(*rows: tuple[str, float, float]) -> list[Interval]:
    return [Interval(instance, "acc", start, end) for instance, start, end in rows]


def test_a_slot_freed_under_a_binding_account_is_refilled_on_any_instance() -> None:
    """Account limit 1 over two instances: a's slot, freed at 10, is taken by
    b at 12. Only time while b waits counts: 2 s usable, none used."""
    used, usable, waits = _sweep(
        spans(("a", 0, 10), ("b", 12, 30)), account_limit=1, limits=LIMITS
    )
    assert waits == [2]
    assert usable == pytest.approx(2)
    assert used == pytest.approx(0)


def test_a_slot_freed_with_room_to_spare_waits_for_its_own_instance() -> None:
    """Account limit 5 does not bind: a's slot freed at 10 waits for a's next
    create at 15, whatever b does meanwhile (b refills its own at once)."""
    used, usable, waits = _sweep(
        spans(("a", 0, 10), ("b", 0, 12), ("b", 12, 20), ("a", 15, 20)),
        account_limit=5,
        limits=LIMITS,
    )
    assert waits == [0, 5]
    # 0-10 both busy; 10-12 a idle; 12-15 only a waits, idle.
    assert usable == pytest.approx(20 + 4 + 3)
    assert used == pytest.approx(20 + 2)


def test_a_slot_freed_below_a_binding_account_limit_goes_to_the_account() -> None:
    """Account limit 2, three instances of limit 1. a's slot frees at 10 with
    the account not full, but b and c wait for more slots than are free, so
    the next creates on any instance refill the oldest: c at 11 takes b's
    slot (8 s), b at 12 takes a's (2 s)."""
    _, _, waits = _sweep(
        spans(("a", 0, 10), ("b", 0, 3), ("c", 11, 20), ("b", 12, 20)),
        account_limit=2,
        limits={"a": 1, "b": 1, "c": 1},
    )
    assert waits == [8, 2]
