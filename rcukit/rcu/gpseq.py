"""Grace-period sequence numbers as the kernel encodes them (kernel.md §6, ``kernel/rcu/rcu.h``).

A ``gp_seq`` is an ``unsigned long``: the low ``RCU_SEQ_CTR_SHIFT`` bits are the phase (0 = idle,
nonzero = a grace period is running), the rest count grace periods. Everything here is a pure
function on Python ints reduced modulo 2**64, so a simulation can start its counters just below the
wrap (as the kernel does, to shake out wrap bugs early) and every comparison still comes out
right. Comparisons therefore never use ``<``: they go through :func:`ulong_cmp_ge` and
:func:`ulong_cmp_lt`, the kernel's ``ULONG_CMP_GE``/``ULONG_CMP_LT``, which treat "less than half
the space ahead" as later.

Polled grace-period cookies (``get_state_synchronize_rcu()`` and friends) are plain snapshot
values; :class:`RcuGpOldState` is the 6.1+ ``struct rcu_gp_oldstate`` that is satisfied by either a
normal or an expedited grace period.
"""

from __future__ import annotations

import attrs

from rcukit.errors import GpSeqError

__all__ = [
    "RCU_GET_STATE_COMPLETED",
    "RCU_SEQ_CTR_SHIFT",
    "RCU_SEQ_STATE_MASK",
    "ULONG_MASK",
    "ULONG_MAX_HALF",
    "RcuGpOldState",
    "poll_full",
    "poll_state",
    "rcu_seq_completed_gp",
    "rcu_seq_ctr",
    "rcu_seq_diff",
    "rcu_seq_done",
    "rcu_seq_done_exact",
    "rcu_seq_end",
    "rcu_seq_new_gp",
    "rcu_seq_snap",
    "rcu_seq_start",
    "rcu_seq_state",
    "ulong_cmp_ge",
    "ulong_cmp_lt",
]

RCU_SEQ_CTR_SHIFT = 2
RCU_SEQ_STATE_MASK = 3
ULONG_MASK = 2**64 - 1
ULONG_MAX_HALF = ULONG_MASK // 2
# ~RCU_SEQ_STATE_MASK as an unsigned long.
_CTR_MASK = ULONG_MASK & ~RCU_SEQ_STATE_MASK
# Guard band of rcu_seq_done_exact(): 3 * RCU_SEQ_STATE_MASK + 1 (the value since the 2024 fix of
# get_state_synchronize_rcu_full() GP-start detection; it was 2 * mask + 1 before).
_DONE_EXACT_GUARD = 3 * RCU_SEQ_STATE_MASK + 1

# Polled-API cookie meaning "already completed" (6.0+, get_completed_synchronize_rcu()). A real
# snapshot always has state 0, so 0x1 can never collide with one.
RCU_GET_STATE_COMPLETED = 0x1


def ulong_cmp_ge(a: int, b: int) -> bool:
    """``ULONG_CMP_GE(a, b)``: a is at or after b, treating the 64-bit space as a circle."""
    return ((a - b) & ULONG_MASK) <= ULONG_MAX_HALF


def ulong_cmp_lt(a: int, b: int) -> bool:
    """``ULONG_CMP_LT(a, b)``: a is strictly before b on the 64-bit circle."""
    return ((a - b) & ULONG_MASK) > ULONG_MAX_HALF


def rcu_seq_ctr(s: int) -> int:
    """The grace-period counter part of ``s`` (``rcu_seq_ctr``)."""
    return (s & ULONG_MASK) >> RCU_SEQ_CTR_SHIFT


def rcu_seq_state(s: int) -> int:
    """The phase bits of ``s``; nonzero means a GP is in progress (``rcu_gp_in_progress``)."""
    return s & RCU_SEQ_STATE_MASK


def rcu_seq_start(s: int) -> int:
    """The value after ``rcu_seq_start`` (``*sp += 1``), as done by ``rcu_gp_init``.

    The kernel WARNs when a GP starts while one is already running; a simulation that does this
    has a bug in its GP kthread, so it is an error here.
    """
    if s & RCU_SEQ_STATE_MASK:
        raise GpSeqError(
            f"rcu_seq_start() on gp_seq {s:#x} whose state is {s & RCU_SEQ_STATE_MASK}; "
            "a grace period may only start from state 0 (idle)"
        )
    return (s + 1) & ULONG_MASK


def rcu_seq_end(s: int) -> int:
    """The value after ``rcu_seq_end`` (``(*sp | 3) + 1``), as done by ``rcu_gp_cleanup``.

    That is the next counter value with state 0. Ending an idle sequence is the kernel's other
    WARN_ON_ONCE, and an error here for the same reason as :func:`rcu_seq_start`.
    """
    if not s & RCU_SEQ_STATE_MASK:
        raise GpSeqError(
            f"rcu_seq_end() on idle gp_seq {s:#x}; a grace period must have been started "
            "(state 1..3) before it can end"
        )
    return ((s | RCU_SEQ_STATE_MASK) + 1) & ULONG_MASK


def rcu_seq_snap(s: int) -> int:
    """``rcu_seq_snap``: the earliest gp_seq proving a full GP elapsed since ``s`` was read.

    Idle at 4 gives 8 (one whole new GP, 5 → 8); in progress at 5 gives 12 (the running GP may
    have started before our update, so it must end and one more full GP must run).
    """
    return (s + 2 * RCU_SEQ_STATE_MASK + 1) & _CTR_MASK


def rcu_seq_done(cur: int, s: int) -> bool:
    """``rcu_seq_done``: has ``cur`` reached the snapshot ``s``? Wrap-safe within half the space."""
    return ((cur - s) & ULONG_MASK) <= ULONG_MAX_HALF


def rcu_seq_done_exact(cur: int, s: int) -> bool:
    """``rcu_seq_done_exact``: like :func:`rcu_seq_done` but without the ULONG_MAX/2 blind spot.

    A genuine snapshot is never more than a couple of grace periods ahead of the counter, so an
    ``s`` further ahead than the guard band can only be a cookie so old that the counter wrapped
    past it; that is reported as done instead of "not yet" for the next 2**63 values.
    """
    return ulong_cmp_ge(cur, s) or ulong_cmp_lt(cur, s - _DONE_EXACT_GUARD)


def rcu_seq_diff(new: int, old: int) -> int:
    """``rcu_seq_diff``: *roughly* how many grace periods lie between two gp_seq readings.

    This is the kernel's formula (rcuscale's "batches" uses it), including its deliberate
    over-count: any partial grace period at either end counts as one, and the result is 1 when
    "definitely no grace period has elapsed", so idle 4 → idle 8 (one full GP) gives 2, and in
    general ``k`` full GPs between two idle readings give ``k + 1``. Equal readings give 0.
    """
    new &= ULONG_MASK
    old &= ULONG_MASK
    if old == new:
        return 0
    partial = 1 if (new & RCU_SEQ_STATE_MASK) or (old & RCU_SEQ_STATE_MASK) else 0
    rnd_diff = ((new & _CTR_MASK) - ((old + RCU_SEQ_STATE_MASK) & _CTR_MASK) + partial) & ULONG_MASK
    if ulong_cmp_ge(RCU_SEQ_STATE_MASK, rnd_diff):
        return 1
    return (((rnd_diff - RCU_SEQ_STATE_MASK - 1) & ULONG_MASK) >> RCU_SEQ_CTR_SHIFT) + 2


def rcu_seq_completed_gp(old: int, new: int) -> bool:
    """``rcu_seq_completed_gp``: has some GP ended between readings ``old`` and ``new``?"""
    return ulong_cmp_lt(old, new & _CTR_MASK)


def rcu_seq_new_gp(old: int, new: int) -> bool:
    """``rcu_seq_new_gp``: has some GP started between readings ``old`` and ``new``?"""
    return ulong_cmp_lt((old + RCU_SEQ_STATE_MASK) & _CTR_MASK, new)


def poll_state(cur: int, oldstate: int) -> bool:
    """``poll_state_synchronize_rcu(oldstate)`` against the counter value ``cur``; never blocks.

    Accepts :data:`RCU_GET_STATE_COMPLETED` and uses the wrap-exact comparison, as 6.x kernels
    do, so a cookie kept across a full counter wrap still reads as done.
    """
    return oldstate == RCU_GET_STATE_COMPLETED or rcu_seq_done_exact(cur, oldstate)


@attrs.frozen
class RcuGpOldState:
    """``struct rcu_gp_oldstate`` (6.1+): a cookie for the ``*_full()`` polled API.

    It records a snapshot of both the normal ``gp_seq`` and the expedited sequence, because either
    kind of grace period ending is enough for the caller's update to be safe.
    """

    rgos_norm: int
    rgos_exp: int

    @classmethod
    def completed(cls) -> RcuGpOldState:
        """``get_completed_synchronize_rcu_full()``: a cookie that every poll reports as done."""
        return cls(RCU_GET_STATE_COMPLETED, RCU_GET_STATE_COMPLETED)


def poll_full(norm_seq: int, exp_seq: int, old: RcuGpOldState) -> bool:
    """``poll_state_synchronize_rcu_full``: done once *either* sequence has passed its snapshot."""
    return (
        old.rgos_norm == RCU_GET_STATE_COMPLETED
        or rcu_seq_done_exact(norm_seq, old.rgos_norm)
        or old.rgos_exp == RCU_GET_STATE_COMPLETED
        or rcu_seq_done_exact(exp_seq, old.rgos_exp)
    )
