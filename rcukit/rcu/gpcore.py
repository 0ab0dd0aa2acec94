"""The clock-agnostic half of the grace-period engine (kernel.md §6: gp_seq, polled API).

:class:`GpCore` owns what every RCU domain needs whatever drives it: the normal and expedited
sequence numbers in the kernel's encoding (``rcu_state.gp_seq``, ``rcu_state.expedited_sequence``:
two :class:`RcuSeq`, as the kernel drives both with the same ``rcu_seq_*()`` helpers), the
outstanding grace-period request (``rcu_state.gp_seq_needed``), the waiters parked on a target
sequence value, and the polled-API arithmetic. It knows nothing about time, CPUs, tasks or Trio:
the simulated kernel (:mod:`rcukit.rcu.tree`) drives it from a GP kthread on virtual time, and the
application domain drives it on Trio's real clock. Keeping it free of both is what lets one engine
serve two clocks.

Waiters sit in a heap keyed by their target, so ending a grace period pops exactly the waiters
whose target is now reached, in O(log n) each, and never looks at the others: a thousand
``synchronize_rcu()`` callers waiting for the *next* GP cost nothing when the current one ends.

Sequence values are ``unsigned long`` (mod 2**64) as the kernel keeps them; the kernel starts
``gp_seq`` at ``(0UL - 300UL) << RCU_SEQ_CTR_SHIFT`` so that the wrap happens within the first few
hundred grace periods. Each :class:`RcuSeq` also keeps its value as an unwrapped Python int so
the heap has a total order across the wrap; callers read the wrapped :attr:`RcuSeq.current`.
"""

from __future__ import annotations

import heapq
from typing import Generic, TypeVar

from rcukit.errors import GpSeqError
from rcukit.rcu.gpseq import (
    RCU_GET_STATE_COMPLETED,
    RCU_SEQ_CTR_SHIFT,
    RCU_SEQ_STATE_MASK,
    ULONG_MASK,
    ULONG_MAX_HALF,
    RcuGpOldState,
    poll_full,
    poll_state,
    rcu_seq_done,
    rcu_seq_snap,
    rcu_seq_state,
)

__all__ = ["RCU_GP_SEQ_INIT", "GpCore", "RcuSeq", "signed_seq"]

W = TypeVar("W")

#: ``rcu_state.gp_seq``'s initial value in ``kernel/rcu/tree.c``: 300 GPs before the wrap.
RCU_GP_SEQ_INIT = (-300 << RCU_SEQ_CTR_SHIFT) & ULONG_MASK

_ULONG_SPAN = ULONG_MASK + 1


def signed_seq(s: int) -> int:
    """A sequence value as the kernel prints it (``%ld``): the wrap region reads as negative."""
    s &= ULONG_MASK
    return s - _ULONG_SPAN if s > ULONG_MAX_HALF else s


def _unwrap(target: int, cur_wrapped: int, cur_unwrapped: int) -> int:
    """Place ``target`` (mod 2**64) on the unwrapped line, as the nearest value to ``cur``."""
    delta = (target - cur_wrapped) & ULONG_MASK
    if delta > ULONG_MAX_HALF:
        delta -= _ULONG_SPAN
    return cur_unwrapped + delta


def _gp_end_of(unwrapped: int) -> int:
    """The idle value a sequence reaches when the GP it is in (if any) ends: ``rcu_seq_end``."""
    return (unwrapped + RCU_SEQ_STATE_MASK) & ~RCU_SEQ_STATE_MASK


class RcuSeq(Generic[W]):
    """One ``rcu_seq`` sequence and the waiters parked on its future values.

    The kernel keeps ``rcu_state.gp_seq`` and ``rcu_state.expedited_sequence`` as the same
    ``unsigned long`` type driven by the same helpers of ``kernel/rcu/rcu.h``; the members here
    are those helpers bound to one sequence: :attr:`current` (``rcu_seq_current``),
    :meth:`in_progress` (``rcu_seq_state() != 0``; ``rcu_gp_in_progress()`` on ``gp_seq``),
    :meth:`start` (``rcu_seq_start``), :meth:`end` (``rcu_seq_end``), :meth:`snap`
    (``rcu_seq_snap``) and :meth:`done` (``rcu_seq_done``). The waiter heap is ours: :meth:`end`
    hands back exactly the waiters whose target it reached.
    """

    __slots__ = ("_heap", "_tiebreak", "completed", "current", "n", "started", "what")

    def __init__(self, initial: int, what: str) -> None:
        if initial & ~ULONG_MASK or initial < 0:
            raise GpSeqError(f"initial {what} sequence {initial!r} must be in 0 .. 2**64-1")
        if rcu_seq_state(initial):
            raise GpSeqError(
                f"initial {what} sequence {initial:#x} has state {rcu_seq_state(initial)}; "
                "a domain must start idle (state 0)"
            )
        #: ``rcu_seq_current()``: the wrapped value, the counter and in the low bits the phase.
        self.current = initial
        #: The same value unwrapped (``current == n & ULONG_MASK``): a total order for the heap.
        self.n = initial
        #: Grace periods started and ended on this sequence so far.
        self.started = 0
        self.completed = 0
        #: "normal" or "expedited", for error messages.
        self.what = what
        self._heap: list[tuple[int, int, W]] = []
        # Insertion order among waiters with the same target.
        self._tiebreak = 0

    def _a_gp(self) -> str:
        return f"{'an' if self.what[0] in 'aeiou' else 'a'} {self.what} grace period"

    def in_progress(self) -> bool:
        """Is a grace period running on this sequence (``rcu_seq_state(current) != 0``)?"""
        return bool(self.current & RCU_SEQ_STATE_MASK)

    def snap(self, *, assume_started: bool = False) -> int:
        """``rcu_seq_snap()``: the value that proves a full GP elapsed from now.

        ``assume_started`` treats an idle sequence as if a GP had just started. A driver uses it
        while it is about to start one but cannot yet say at which instant it will: a snapshot
        then must not count on that GP, so it asks for the one after.
        """
        s = self.n
        if assume_started and not s & RCU_SEQ_STATE_MASK:
            s += 1
        return rcu_seq_snap(s & ULONG_MASK)

    def done(self, s: int) -> bool:
        """``rcu_seq_done()``: has the sequence reached the snapshot ``s``?"""
        return rcu_seq_done(self.current, s)

    def start(self) -> int:
        """``rcu_seq_start()`` (in ``rcu_gp_init``, ``rcu_exp_gp_seq_start``); the new value."""
        if self.n & RCU_SEQ_STATE_MASK:
            raise GpSeqError(
                f"starting {self._a_gp()} while one is running "
                f"(sequence {self.current:#x}); end it first"
            )
        self.n += 1
        self.current = self.n & ULONG_MASK
        self.started += 1
        return self.current

    def end(self) -> list[W]:
        """``rcu_seq_end()`` (``rcu_gp_cleanup``, ``rcu_exp_gp_seq_end``); the waiters now done."""
        if not self.n & RCU_SEQ_STATE_MASK:
            raise GpSeqError(
                f"ending {self._a_gp()} while none is running "
                f"(sequence {self.current:#x}); start one first"
            )
        n = self.n = _gp_end_of(self.n)
        self.current = n & ULONG_MASK
        self.completed += 1
        heap = self._heap
        woken: list[W] = []
        while heap and heap[0][0] <= n:
            woken.append(heapq.heappop(heap)[2])
        return woken

    def unwrap(self, target: int) -> int:
        """``target`` (mod 2**64) on the unwrapped line, as the value nearest to :attr:`n`."""
        return _unwrap(target, self.current, self.n)

    def add_waiter(self, target: int, waiter: W) -> bool:
        """Park ``waiter`` until the sequence reaches ``target``; False if it already has."""
        t = self.unwrap(target)
        if t <= self.n:
            return False
        self._tiebreak += 1
        heapq.heappush(self._heap, (t, self._tiebreak, waiter))
        return True

    def n_waiters(self) -> int:
        return len(self._heap)


class GpCore(Generic[W]):
    """Grace-period sequences, requests, waiters and polled cookies for one RCU domain.

    ``W`` is whatever the driver wants back when a waiter's target is reached (a wait queue, a
    Trio event, a per-CPU callback list to advance): :meth:`RcuSeq.end` returns them and the
    driver wakes them with its own clock. Not thread-safe: the driver serialises access, as the
    kernel's ``rcu_state`` is serialised by the GP kthread and ``rnp`` locks.
    """

    __slots__ = ("_need", "expedited_sequence", "gp_seq")

    def __init__(self, initial_gp_seq: int = RCU_GP_SEQ_INIT, initial_exp_seq: int = 0) -> None:
        #: ``rcu_state.gp_seq``: normal grace periods.
        self.gp_seq: RcuSeq[W] = RcuSeq(initial_gp_seq, "normal")
        #: ``rcu_state.expedited_sequence``: expedited grace periods.
        self.expedited_sequence: RcuSeq[W] = RcuSeq(initial_exp_seq, "expedited")
        # Unwrapped gp_seq_needed: the furthest target anyone asked for.
        self._need = self.gp_seq.n

    # ------------------------------------------------------------------ normal GP requests

    def request_gp(self, target: int) -> bool:
        """Record that a GP ending at ``target`` is wanted (``rcu_start_this_gp``).

        Returns :meth:`gp_needed` afterwards, i.e. whether the driver has a GP to start.
        """
        t = self.gp_seq.unwrap(target)
        if t > self._need:
            self._need = t
        return self.gp_needed()

    def gp_needed(self) -> bool:
        """Is a GP beyond the current one (or any GP, when idle) still needed?"""
        return self._need > _gp_end_of(self.gp_seq.n)

    @property
    def gp_seq_needed(self) -> int:
        """``rcu_state.gp_seq_needed``: the furthest requested target (wrapped)."""
        return self._need & ULONG_MASK

    # ------------------------------------------------------------------ polled API

    @staticmethod
    def get_completed() -> int:
        """``get_completed_synchronize_rcu()``: a cookie every poll reports as done."""
        return RCU_GET_STATE_COMPLETED

    def poll(self, cookie: int) -> bool:
        """``poll_state_synchronize_rcu(cookie)``: never blocks, wrap-exact."""
        return poll_state(self.gp_seq.current, cookie)

    def get_state_full(self) -> RcuGpOldState:
        """``get_state_synchronize_rcu_full()``: snapshots of both sequences."""
        return RcuGpOldState(self.gp_seq.snap(), self.expedited_sequence.snap())

    def poll_full(self, old: RcuGpOldState) -> bool:
        """``poll_state_synchronize_rcu_full()``: done once either kind of GP has covered it."""
        return poll_full(self.gp_seq.current, self.expedited_sequence.current, old)
