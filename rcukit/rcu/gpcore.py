"""The clock-agnostic half of the grace-period engine (kernel.md §6: gp_seq, polled API).

:class:`GpCore` owns what every RCU domain needs whatever drives it: the normal and expedited
sequence numbers in the kernel's encoding (``rcu_state.gp_seq``, ``rcu_state.expedited_sequence``),
the outstanding grace-period request (``rcu_state.gp_seq_needed``), the waiters parked on a target
sequence value, and the polled-API arithmetic. It knows nothing about time, CPUs, tasks or Trio:
the simulated kernel (:mod:`rcukit.rcu.tree`) drives it from a GP kthread on virtual time, and the
application domain drives it on Trio's real clock. Keeping it free of both is what lets one engine
serve two clocks.

Waiters sit in a heap keyed by their target, so ending a grace period pops exactly the waiters
whose target is now reached, in O(log n) each, and never looks at the others: a thousand
``synchronize_rcu()`` callers waiting for the *next* GP cost nothing when the current one ends.

Sequence values are ``unsigned long`` (mod 2**64) as the kernel keeps them; the kernel starts
``gp_seq`` at ``(0UL - 300UL) << RCU_SEQ_CTR_SHIFT`` so that the wrap happens within the first few
hundred grace periods. Internally the core also keeps an unwrapped Python int of each sequence so
the heap has a total order across the wrap; callers only ever see the wrapped values.
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

__all__ = ["RCU_GP_SEQ_INIT", "GpCore", "signed_seq"]

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


class _Seq(Generic[W]):
    """One ``rcu_seq`` counter with its waiter heap (used for normal and expedited GPs)."""

    __slots__ = ("completed", "heap", "n", "started", "what")

    def __init__(self, initial: int, what: str) -> None:
        if initial & ~ULONG_MASK or initial < 0:
            raise GpSeqError(f"initial {what} sequence {initial!r} must be in 0 .. 2**64-1")
        if rcu_seq_state(initial):
            raise GpSeqError(
                f"initial {what} sequence {initial:#x} has state {rcu_seq_state(initial)}; "
                "a domain must start idle (state 0)"
            )
        # Unwrapped value; the wrapped one is n & ULONG_MASK.
        self.n = initial
        self.heap: list[tuple[int, int, W]] = []
        self.started = 0
        self.completed = 0
        self.what = what

    @property
    def value(self) -> int:
        return self.n & ULONG_MASK

    def start(self) -> int:
        if self.n & RCU_SEQ_STATE_MASK:
            raise GpSeqError(
                f"starting a {self.what} grace period while one is running "
                f"(sequence {self.value:#x}); end it first"
            )
        self.n += 1
        self.started += 1
        return self.value

    def end(self) -> list[W]:
        if not self.n & RCU_SEQ_STATE_MASK:
            raise GpSeqError(
                f"ending a {self.what} grace period while none is running "
                f"(sequence {self.value:#x}); start one first"
            )
        self.n = _gp_end_of(self.n)
        self.completed += 1
        heap = self.heap
        woken: list[W] = []
        while heap and heap[0][0] <= self.n:
            woken.append(heapq.heappop(heap)[2])
        return woken

    def add_waiter(self, target: int, seq: int, waiter: W) -> bool:
        t = _unwrap(target, self.value, self.n)
        if t <= self.n:
            return False
        heapq.heappush(self.heap, (t, seq, waiter))
        return True


class GpCore(Generic[W]):
    """Grace-period sequence state, requests, waiters and polled cookies for one RCU domain.

    ``W`` is whatever the driver wants back when a waiter's target is reached (a wait queue, a
    Trio event, a per-CPU callback list to advance): :meth:`end_gp` and :meth:`end_exp` return
    them and the driver wakes them with its own clock. Not thread-safe: the driver serialises
    access, as the kernel's ``rcu_state`` is serialised by the GP kthread and ``rnp`` locks.
    """

    def __init__(self, initial_gp_seq: int = RCU_GP_SEQ_INIT, initial_exp_seq: int = 0) -> None:
        self._gp: _Seq[W] = _Seq(initial_gp_seq, "normal")
        self._exp: _Seq[W] = _Seq(initial_exp_seq, "expedited")
        # Unwrapped gp_seq_needed: the furthest target anyone asked for.
        self._need = self._gp.n
        self._seq = 0

    # ------------------------------------------------------------------ normal grace periods

    @property
    def gp_seq(self) -> int:
        """``rcu_state.gp_seq``: the counter and, in the low two bits, the GP phase."""
        return self._gp.value

    @property
    def gps_started(self) -> int:
        return self._gp.started

    @property
    def gps_completed(self) -> int:
        return self._gp.completed

    def gp_in_progress(self) -> bool:
        """``rcu_gp_in_progress()``."""
        return bool(self._gp.n & RCU_SEQ_STATE_MASK)

    def snap(self, *, assume_started: bool = False) -> int:
        """``rcu_seq_snap(&gp_seq)``: the value that proves a full GP elapsed from now.

        ``assume_started`` treats an idle sequence as if a GP had just started. A driver uses it
        while it is about to start one but cannot yet say at which instant it will: a snapshot
        then must not count on that GP, so it asks for the one after.
        """
        s = self._gp.n
        if assume_started and not s & RCU_SEQ_STATE_MASK:
            s += 1
        return rcu_seq_snap(s & ULONG_MASK)

    def done(self, s: int) -> bool:
        """``rcu_seq_done(&gp_seq, s)``: has the normal sequence reached the snapshot ``s``?"""
        return rcu_seq_done(self._gp.value, s)

    def request_gp(self, target: int) -> bool:
        """Record that a GP ending at ``target`` is wanted (``rcu_start_this_gp``).

        Returns :meth:`gp_needed` afterwards, i.e. whether the driver has a GP to start.
        """
        t = _unwrap(target, self._gp.value, self._gp.n)
        if t > self._need:
            self._need = t
        return self.gp_needed()

    def gp_needed(self) -> bool:
        """Is a GP beyond the current one (or any GP, when idle) still needed?"""
        return self._need > _gp_end_of(self._gp.n)

    @property
    def gp_seq_needed(self) -> int:
        """``rcu_state.gp_seq_needed``: the furthest requested target (wrapped)."""
        return self._need & ULONG_MASK

    def start_gp(self) -> int:
        """``rcu_seq_start`` on ``gp_seq`` (``rcu_gp_init``); returns the new value."""
        return self._gp.start()

    def end_gp(self) -> list[W]:
        """``rcu_seq_end`` on ``gp_seq`` (``rcu_gp_cleanup``); returns the waiters now done."""
        return self._gp.end()

    def add_waiter(self, target: int, waiter: W) -> bool:
        """Park ``waiter`` until ``gp_seq`` reaches ``target``; False if it already has."""
        self._seq += 1
        return self._gp.add_waiter(target, self._seq, waiter)

    def n_waiters(self) -> int:
        return len(self._gp.heap)

    # ------------------------------------------------------------------ expedited grace periods

    @property
    def exp_seq(self) -> int:
        """``rcu_state.expedited_sequence`` (same ``rcu_seq`` encoding)."""
        return self._exp.value

    @property
    def exp_completed(self) -> int:
        return self._exp.completed

    def exp_in_progress(self) -> bool:
        return bool(self._exp.n & RCU_SEQ_STATE_MASK)

    def exp_snap(self, *, assume_started: bool = False) -> int:
        """``rcu_exp_gp_seq_snap()``; ``assume_started`` as for :meth:`snap`."""
        s = self._exp.n
        if assume_started and not s & RCU_SEQ_STATE_MASK:
            s += 1
        return rcu_seq_snap(s & ULONG_MASK)

    def exp_done(self, s: int) -> bool:
        return rcu_seq_done(self._exp.value, s)

    def start_exp(self) -> int:
        return self._exp.start()

    def end_exp(self) -> list[W]:
        return self._exp.end()

    def add_exp_waiter(self, target: int, waiter: W) -> bool:
        self._seq += 1
        return self._exp.add_waiter(target, self._seq, waiter)

    def n_exp_waiters(self) -> int:
        return len(self._exp.heap)

    # ------------------------------------------------------------------ polled API

    @staticmethod
    def get_completed() -> int:
        """``get_completed_synchronize_rcu()``: a cookie every poll reports as done."""
        return RCU_GET_STATE_COMPLETED

    def poll(self, cookie: int) -> bool:
        """``poll_state_synchronize_rcu(cookie)``: never blocks, wrap-exact."""
        return poll_state(self._gp.value, cookie)

    def get_state_full(self) -> RcuGpOldState:
        """``get_state_synchronize_rcu_full()``: snapshots of both sequences."""
        return RcuGpOldState(self.snap(), self.exp_snap())

    def poll_full(self, old: RcuGpOldState) -> bool:
        """``poll_state_synchronize_rcu_full()``: done once either kind of GP has covered it."""
        return poll_full(self._gp.value, self._exp.value, old)
