"""Fidelity of ``rcukit.rcu.gpseq`` to ``kernel/rcu/rcu.h``: one test per helper, each stating
the kernel's fact, the version it holds for and where it lives.

Source read: torvalds/linux ``kernel/rcu/rcu.h`` @ 00c1d298d486 (the helpers are unchanged from
v5.9 through v6.x apart from ``rcu_seq_done_exact()``'s guard band, see its test), and
``kernel/rcu/tree.c`` of v6.1 for the polled API.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from rcukit.errors import GpSeqError
from rcukit.rcu.gpcore import RCU_GP_SEQ_INIT, signed_seq
from rcukit.rcu.gpseq import (
    RCU_GET_STATE_COMPLETED,
    RCU_SEQ_CTR_SHIFT,
    RCU_SEQ_STATE_MASK,
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
)

U64 = 1 << 64
ulongs = st.one_of(
    st.integers(0, ULONG_MASK),
    st.integers(ULONG_MASK - 64, ULONG_MASK),
    st.integers(0, 64),
)
#: An idle gp_seq (state bits 0), anywhere on the 64-bit circle.
idle_seqs = ulongs.map(lambda s: s & ~RCU_SEQ_STATE_MASK & ULONG_MASK)


def test_seq_encoding_constants() -> None:
    """``RCU_SEQ_CTR_SHIFT 2`` and ``RCU_SEQ_STATE_MASK ((1 << RCU_SEQ_CTR_SHIFT) - 1)``; the
    polled-API "already completed" cookie ``RCU_GET_STATE_COMPLETED 0x1`` (v6.0+,
    kernel/rcu/rcu.h)."""
    assert RCU_SEQ_CTR_SHIFT == 2
    assert RCU_SEQ_STATE_MASK == (1 << RCU_SEQ_CTR_SHIFT) - 1 == 3
    assert RCU_GET_STATE_COMPLETED == 0x1


def test_gp_seq_starts_300_grace_periods_before_the_wrap() -> None:
    """``rcu_state.gp_seq = (0UL - 300UL) << RCU_SEQ_CTR_SHIFT`` (kernel/rcu/tree.c, v5.9-v6.x,
    read in Rtoax/linux-5.10.13 @ 2a957306e1fc), so counter wrap is exercised within minutes of
    boot; trace events print it as ``%ld``: -1200, and the first GP starts at -1199."""
    assert RCU_GP_SEQ_INIT == ((0 - 300) << 2) % U64
    assert signed_seq(RCU_GP_SEQ_INIT) == -1200
    assert signed_seq(rcu_seq_start(RCU_GP_SEQ_INIT)) == -1199
    assert rcu_seq_end(rcu_seq_start(RCU_GP_SEQ_INIT)) == ((0 - 299) << 2) % U64


@given(ulongs)
def test_rcu_seq_ctr_and_state_split_the_unsigned_long(s: int) -> None:
    """``rcu_seq_ctr(s) = s >> RCU_SEQ_CTR_SHIFT`` and ``rcu_seq_state(s) = s &
    RCU_SEQ_STATE_MASK`` (kernel/rcu/rcu.h, v5.9-v6.x): the two parts rebuild the value."""
    assert rcu_seq_ctr(s) == s >> 2
    assert rcu_seq_state(s) == s & 3
    assert (rcu_seq_ctr(s) << 2) | rcu_seq_state(s) == s


@given(idle_seqs)
def test_rcu_seq_start_and_end(s: int) -> None:
    """``rcu_seq_start()`` is ``*sp += 1`` and WARNs unless the state is then 1;
    ``rcu_seq_end()`` WARNs on an idle sequence and stores ``rcu_seq_endval() = (*sp |
    RCU_SEQ_STATE_MASK) + 1`` (kernel/rcu/rcu.h, v5.9-v6.x): one GP takes an idle value to the
    next idle value, one counter step on, wrapping at 2**64. The model refuses what the kernel
    WARNs about."""
    started = rcu_seq_start(s)
    assert started == (s + 1) % U64 and rcu_seq_state(started) == 1
    ended = rcu_seq_end(started)
    assert ended == (s + 4) % U64 and rcu_seq_state(ended) == 0
    for state in (2, 3):  # the GP kthread's intermediate phases end the same way
        assert rcu_seq_end((s + state) % U64) == ended
    with pytest.raises(GpSeqError):
        rcu_seq_start(started)
    with pytest.raises(GpSeqError):
        rcu_seq_end(s)


@given(ulongs)
def test_rcu_seq_snap_needs_one_full_grace_period(s: int) -> None:
    """``rcu_seq_snap()`` = ``(*sp + 2 * RCU_SEQ_STATE_MASK + 1) & ~RCU_SEQ_STATE_MASK``
    (kernel/rcu/rcu.h, v5.9-v6.x), "the earliest value of the grace-period sequence number that
    will indicate that a full grace period has elapsed since the current time": idle at s, the
    next GP's end (s + 4); a GP in progress, the end of the GP after it."""
    snap = rcu_seq_snap(s)
    assert rcu_seq_state(snap) == 0
    base = s & ~3
    assert snap == ((base + 4) if rcu_seq_state(s) == 0 else (base + 8)) % U64
    # The kernel's own worked values (kernel.md 6): idle 4 -> 8, in progress 5 -> 12.
    assert (rcu_seq_snap(4), rcu_seq_snap(5)) == (8, 12)


@given(ulongs, st.integers(0, ULONG_MASK))
def test_rcu_seq_done_is_ulong_cmp_ge(s: int, d: int) -> None:
    """``rcu_seq_done(sp, s) = ULONG_CMP_GE(READ_ONCE(*sp), s)`` (kernel/rcu/rcu.h,
    v5.9-v6.x), with ``ULONG_CMP_GE(a, b) = ULONG_MAX / 2 >= (a) - (b)``: the counter has
    reached the snapshot when it is 0 .. ULONG_MAX/2 past it on the 64-bit circle."""
    cur = (s + d) % U64
    assert rcu_seq_done(cur, s) is (d <= ULONG_MASK // 2)


@given(ulongs, st.integers(0, ULONG_MASK))
def test_rcu_seq_done_exact_guard_band(s: int, ahead: int) -> None:
    """``rcu_seq_done_exact()`` = ``ULONG_CMP_GE(cur_s, s) || ULONG_CMP_LT(cur_s, s - (3 *
    RCU_SEQ_STATE_MASK + 1))`` (kernel/rcu/rcu.h since 85aad7cc4178, "rcu: Fix
    get_state_synchronize_rcu_full() GP-start detection"; the band was ``2 *
    RCU_SEQ_STATE_MASK + 1`` before, e.g. torvalds/linux @ 00c1d298d486): a cookie reads as not
    yet done only while it is 1 .. 10 ahead of the counter; anything further ahead can only be
    a cookie the counter wrapped past, and reads as done."""
    cur = (s - ahead) % U64
    assert rcu_seq_done_exact(cur, s) is not (1 <= ahead <= 3 * RCU_SEQ_STATE_MASK + 1)


@given(idle_seqs, st.integers(1, 1000))
def test_rcu_seq_diff_counts_grace_periods_like_rcuscale(old: int, k: int) -> None:
    """``rcu_seq_diff(new, old)`` (kernel/rcu/rcu.h, v5.9-v6.x), rcuscale's "batches"
    (``rcuscale_seq_diff()`` -> ``rcu_seq_diff()``, kernel/rcu/rcuscale.c): 0 for equal
    readings, 1 when "definitely no grace period has elapsed", otherwise ``((rnd_diff -
    RCU_SEQ_STATE_MASK - 1) >> RCU_SEQ_CTR_SHIFT) + 2`` where ``rnd_diff`` rounds ``old`` up to
    a GP boundary and adds one for a partial GP at either end. So ``k`` full GPs between two
    idle readings count ``k + 1``, and ``k`` full GPs plus one started count ``k + 1`` too."""
    assert rcu_seq_diff(old, old) == 0
    assert rcu_seq_diff((old + 1) % U64, old) == 1  # a GP started, none ended
    assert rcu_seq_diff((old + 4 * k) % U64, old) == k + 1
    assert rcu_seq_diff((old + 4 * k + 1) % U64, old) == k + 1
    # From inside a GP (state 1) to idle k GP ends later: the first one was partial.
    assert rcu_seq_diff((old + 4 * k) % U64, (old + 1) % U64) == (k if k > 1 else 1)


@given(idle_seqs)
def test_rcu_seq_completed_gp_and_new_gp(s: int) -> None:
    """``rcu_seq_completed_gp(old, new) = ULONG_CMP_LT(old, new & ~RCU_SEQ_STATE_MASK)`` and
    ``rcu_seq_new_gp(old, new) = ULONG_CMP_LT((old + RCU_SEQ_STATE_MASK) &
    ~RCU_SEQ_STATE_MASK, new)`` (kernel/rcu/rcu.h, v5.9-v6.x, used by
    ``__note_gp_changes()``): a GP start is seen as new but not completed; its end as
    completed; a reading taken inside a GP sees that GP's end as completed but not as new."""
    started = rcu_seq_start(s)
    ended = rcu_seq_end(started)
    assert rcu_seq_new_gp(s, started) and not rcu_seq_completed_gp(s, started)
    assert rcu_seq_new_gp(s, ended) and rcu_seq_completed_gp(s, ended)
    assert rcu_seq_completed_gp(started, ended) and not rcu_seq_new_gp(started, ended)
    assert not rcu_seq_new_gp(s, s) and not rcu_seq_completed_gp(s, s)


@given(idle_seqs)
def test_poll_state_synchronize_rcu(cur: int) -> None:
    """``poll_state_synchronize_rcu(oldstate)`` (v6.1 kernel/rcu/tree.c): true if ``oldstate ==
    RCU_GET_STATE_COMPLETED || rcu_seq_done_exact(&rcu_state.gp_seq_polled, oldstate)``;
    ``get_completed_synchronize_rcu()`` (v6.0) returns that cookie, which no real snapshot can
    equal (snapshots have state 0)."""
    assert poll_state(cur, RCU_GET_STATE_COMPLETED)
    snap = rcu_seq_snap(cur)
    assert snap != RCU_GET_STATE_COMPLETED
    assert not poll_state(cur, snap)
    assert poll_state(rcu_seq_end(rcu_seq_start(cur)), snap)


@given(idle_seqs, idle_seqs)
def test_poll_state_synchronize_rcu_full_takes_either_sequence(norm: int, exp: int) -> None:
    """``poll_state_synchronize_rcu_full(rgosp)`` (v6.1 kernel/rcu/tree.c, "struct
    rcu_gp_oldstate"): done if ``rgos_norm`` is ``RCU_GET_STATE_COMPLETED`` or done against the
    root ``rcu_node``'s ``gp_seq``, or ``rgos_exp`` is ``RCU_GET_STATE_COMPLETED`` or done
    against ``rcu_state.expedited_sequence``: a normal or an expedited GP, whichever ends
    first."""
    old = RcuGpOldState(rcu_seq_snap(norm), rcu_seq_snap(exp))
    assert not poll_full(norm, exp, old)
    assert poll_full(rcu_seq_end(rcu_seq_start(norm)), exp, old)
    assert poll_full(norm, rcu_seq_end(rcu_seq_start(exp)), old)
    assert poll_full(norm, exp, RcuGpOldState.completed())
    assert poll_full(norm, exp, RcuGpOldState(RCU_GET_STATE_COMPLETED, old.rgos_exp))
    assert poll_full(norm, exp, RcuGpOldState(old.rgos_norm, RCU_GET_STATE_COMPLETED))
