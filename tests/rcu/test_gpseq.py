"""gp_seq arithmetic against the kernel's worked examples and wrap-around properties."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcukit.errors import GpSeqError, RcukitError
from rcukit.rcu.gpseq import (
    RCU_GET_STATE_COMPLETED,
    ULONG_MASK,
    RcuGpOldState,
    poll_full,
    poll_state,
    rcu_seq_completed_gp,
    rcu_seq_ctr,
    rcu_seq_diff,
    rcu_seq_done,
    rcu_seq_done_exact,
    rcu_seq_end,
    rcu_seq_new_gp,
    rcu_seq_snap,
    rcu_seq_start,
    rcu_seq_state,
    ulong_cmp_ge,
    ulong_cmp_lt,
)

# Any unsigned long, with the region just below the wrap (where the kernel starts its counters,
# (0UL - 300) << 2) and small values over-represented.
ulongs = st.one_of(
    st.integers(0, ULONG_MASK),
    st.integers(ULONG_MASK - 4000, ULONG_MASK),
    st.integers(0, 4000),
)


def full_gp(s: int) -> int:
    """One complete grace period from idle."""
    return rcu_seq_end(rcu_seq_start(s))


def finish_current(s: int) -> int:
    """End the running GP, if any."""
    return rcu_seq_end(s) if rcu_seq_state(s) else s


def test_kernel_examples_snap() -> None:
    assert rcu_seq_snap(4) == 8  # idle at 4: one whole new GP (5 -> 8)
    assert rcu_seq_snap(5) == 12  # in progress at 5: finish it, then one more
    assert rcu_seq_snap(6) == 12
    assert rcu_seq_snap(7) == 12
    assert rcu_seq_snap(0) == 4


def test_kernel_example_idle_needs_whole_new_gp() -> None:
    s = 4
    snap = rcu_seq_snap(s)
    s = rcu_seq_start(s)
    assert s == 5
    assert not rcu_seq_done(s, snap)
    s = rcu_seq_end(s)
    assert s == 8
    assert rcu_seq_done(s, snap)


def test_kernel_example_in_progress_needs_one_more() -> None:
    s = 5
    snap = rcu_seq_snap(s)
    s = rcu_seq_end(s)  # the GP that was already running ends: not enough
    assert s == 8
    assert not rcu_seq_done(s, snap)
    s = full_gp(s)
    assert s == 12
    assert rcu_seq_done(s, snap)


def test_ctr_and_state() -> None:
    assert rcu_seq_ctr(13) == 3
    assert rcu_seq_state(13) == 1
    assert rcu_seq_state(12) == 0
    assert rcu_seq_ctr(ULONG_MASK) == ULONG_MASK >> 2
    assert rcu_seq_state(-1) == 3  # negative ints behave like their unsigned long image


def test_start_end_round_trip() -> None:
    assert rcu_seq_start(8) == 9
    assert rcu_seq_end(9) == 12
    assert rcu_seq_end(10) == 12
    assert rcu_seq_end(11) == 12
    assert rcu_seq_start(ULONG_MASK - 3) == ULONG_MASK - 2
    assert rcu_seq_end(ULONG_MASK - 2) == 0  # wraps to counter 0, idle


def test_start_while_in_progress_is_an_error() -> None:
    with pytest.raises(GpSeqError, match="state 0"):
        rcu_seq_start(5)
    with pytest.raises(ValueError):
        rcu_seq_start(7)


def test_end_while_idle_is_an_error() -> None:
    with pytest.raises(RcukitError, match="idle"):
        rcu_seq_end(8)


def test_ulong_cmp_wraps() -> None:
    assert ulong_cmp_ge(0, ULONG_MASK)  # 0 comes right after ULONG_MAX
    assert ulong_cmp_lt(ULONG_MASK, 0)
    assert ulong_cmp_ge(5, 5)
    assert not ulong_cmp_lt(5, 5)
    assert ulong_cmp_lt(0, ULONG_MASK // 2 + 1)  # just past half the space counts as behind


@given(ulongs)
def test_start_end_properties(s: int) -> None:
    idle = s & ~3 & ULONG_MASK
    started = rcu_seq_start(idle)
    assert rcu_seq_state(started) == 1
    ended = rcu_seq_end(started)
    assert rcu_seq_state(ended) == 0
    assert rcu_seq_ctr(ended) == (rcu_seq_ctr(idle) + 1) & (ULONG_MASK >> 2)
    assert rcu_seq_completed_gp(idle, ended)
    assert rcu_seq_new_gp(idle, started)
    assert not rcu_seq_completed_gp(idle, started)
    assert not rcu_seq_new_gp(idle, idle)


@given(ulongs, st.integers(0, 5))
def test_snapshot_done_exactly_after_one_full_gp(s: int, extra: int) -> None:
    snap = rcu_seq_snap(s)
    assert rcu_seq_state(snap) == 0
    cur = finish_current(s)
    # Before any GP that started after the snapshot has ended, it is not done.
    assert not rcu_seq_done(cur, snap)
    assert not rcu_seq_done_exact(cur, snap)
    assert not rcu_seq_done(rcu_seq_start(cur), snap)
    cur = full_gp(cur)
    assert cur == snap
    for _ in range(extra):
        assert rcu_seq_done(cur, snap)
        assert rcu_seq_done(rcu_seq_start(cur), snap)
        cur = full_gp(cur)
    assert rcu_seq_done(cur, snap)
    assert rcu_seq_done_exact(cur, snap)
    assert poll_state(cur, snap)


@given(ulongs, st.integers(1, 1000))
def test_diff_counts_gps_between_idle_readings(s: int, k: int) -> None:
    old = s & ~3 & ULONG_MASK
    new = old
    for _ in range(k):
        new = full_gp(new)
    # The kernel's "roughly": k full GPs between idle readings report k + 1.
    assert rcu_seq_diff(new, old) == k + 1
    assert rcu_seq_diff(old, old) == 0
    # A GP that has only started is "definitely no grace period": 1.
    assert rcu_seq_diff(rcu_seq_start(old), old) == 1


def test_diff_kernel_values() -> None:
    assert rcu_seq_diff(8, 4) == 2
    assert rcu_seq_diff(12, 4) == 3
    assert rcu_seq_diff(8, 5) == 1  # the running GP ended; no full GP since 5
    assert rcu_seq_diff(9, 4) == 2
    assert rcu_seq_diff(13, 5) == 2
    assert rcu_seq_diff(4, 0xFFFF_FFFF_FFFF_FFFC) == 3  # across the wrap: 2 full GPs


@given(ulongs, st.integers(0, 200))
def test_diff_is_monotonic_in_new(s: int, steps: int) -> None:
    old = s
    cur = s
    prev = 0
    for _ in range(steps):
        cur = rcu_seq_end(cur) if rcu_seq_state(cur) else rcu_seq_start(cur)
        d = rcu_seq_diff(cur, old)
        assert d >= prev
        prev = d


def test_done_exact_handles_far_future_cookie() -> None:
    cur = 1000
    # A cookie more than the guard band (10) ahead is only possible after a full wrap: done.
    far = (cur + 12 + ULONG_MASK // 4) & ULONG_MASK
    assert not rcu_seq_done(cur, far)
    assert rcu_seq_done_exact(cur, far)
    # Genuine snapshots are at most 7 ahead and are not done.
    assert not rcu_seq_done_exact(1000, rcu_seq_snap(1000))
    assert not rcu_seq_done_exact(1001, rcu_seq_snap(1001))
    assert not rcu_seq_done_exact(1000, 1010)  # exactly the guard band: still "not yet"
    assert rcu_seq_done_exact(1000, 1011)  # beyond it: treated as wrapped, done


@given(ulongs, st.integers(11, 2**62))
def test_done_exact_beyond_guard_band(cur: int, ahead: int) -> None:
    s = (cur + ahead) & ULONG_MASK
    assert rcu_seq_done_exact(cur, s)
    assert not rcu_seq_done(cur, s)


def test_get_completed_cookie() -> None:
    assert poll_state(0, RCU_GET_STATE_COMPLETED)
    assert poll_state(ULONG_MASK - 2, RCU_GET_STATE_COMPLETED)
    done = RcuGpOldState.completed()
    assert poll_full(100, 200, done)


def test_poll_full_either_sequence() -> None:
    norm, exp = 100, 40
    old = RcuGpOldState(rcu_seq_snap(norm), rcu_seq_snap(exp))
    assert not poll_full(norm, exp, old)
    assert poll_full(full_gp(norm), exp, old)  # a normal GP is enough
    assert poll_full(norm, full_gp(exp), old)  # an expedited GP is enough
    assert not poll_full(rcu_seq_start(norm), rcu_seq_start(exp), old)


def test_oldstate_is_frozen_and_comparable() -> None:
    a = RcuGpOldState(8, 12)
    assert a == RcuGpOldState(8, 12)
    assert hash(a) == hash(RcuGpOldState(8, 12))
    with pytest.raises(AttributeError):
        a.rgos_norm = 4  # type: ignore[misc]
