"""Per-CPU RCU callback lists: the kernel's ``struct rcu_segcblist`` (kernel.md §6, "Callbacks").

The kernel keeps one singly linked list plus ``tails[4]`` (segment boundaries) and ``gp_seq[4]``,
so that accelerating or advancing callbacks only moves boundaries, never callbacks. This module
keeps the same shape: one :class:`collections.deque` holds every callback in list order, and
``_seglen[4]`` plays the part of ``tails[]`` (a segment is the next ``_seglen[i]`` entries). So
``accelerate`` and ``advance`` are O(1) whatever the queue length, ``enqueue`` is one append and
one increment, and ``extract_done`` pops from the left.

Segments, oldest first:

* ``RCU_DONE_TAIL`` (0): grace period over, ready to invoke.
* ``RCU_WAIT_TAIL`` (1): waiting for ``gp_seq[1]``.
* ``RCU_NEXT_READY_TAIL`` (2): waiting for ``gp_seq[2]`` (a later GP).
* ``RCU_NEXT_TAIL`` (3): no grace period assigned yet; these must never become ready until
  :meth:`SegCbList.accelerate` gives them one.

``gp_seq[]`` is meaningful only for non-empty WAIT and NEXT_READY segments, as in the kernel.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import attrs

from rcukit.errors import ConfigError, SegCbListError, SimulationError
from rcukit.rcu.gpseq import ULONG_MASK, ULONG_MAX_HALF

__all__ = [
    "DEFAULT_MAX_RCU_BLIMIT",
    "DEFAULT_RCU_DIVISOR",
    "RCU_CBLIST_NSEGS",
    "RCU_DONE_TAIL",
    "RCU_NEXT_READY_TAIL",
    "RCU_NEXT_TAIL",
    "RCU_WAIT_TAIL",
    "BatchLimits",
    "RcuHead",
    "SegCbList",
]

RCU_DONE_TAIL = 0
RCU_WAIT_TAIL = 1
RCU_NEXT_READY_TAIL = 2
RCU_NEXT_TAIL = 3
RCU_CBLIST_NSEGS = 4

#: What "blimit is ignored" becomes since v5.5 (``kernel/rcu/tree.c``): "Maximum callbacks per
#: rcu_do_batch ... even during callback flood" (before, ``rdp->blimit`` became ``LONG_MAX``).
DEFAULT_MAX_RCU_BLIMIT = 10000
#: ``rcu_divisor`` (v5.5+): a pass may invoke ``pending >> rcu_divisor`` when that is more.
DEFAULT_RCU_DIVISOR = 7


class RcuHead:
    """``struct rcu_head``: what ``call_rcu()`` queues, allocated once per call, so kept tiny.

    The kernel embeds an ``rcu_head`` in the object and recovers the object with ``container_of()``
    in the callback. The Python equivalent is a subclass carrying the payload, whose callback
    narrows the head back to that subclass::

        class Node(RcuHead):
            __slots__ = ("key", "value")

            def __init__(self, key: str, value: bytes) -> None:
                super().__init__(free_node)
                self.key = key
                self.value = value

        def free_node(head: RcuHead) -> None:
            assert isinstance(head, Node)   # container_of()
            pool.release(head.value)

    Declare ``__slots__`` in subclasses too, or every instance grows a ``__dict__``. ``func`` may be
    ``None`` for heads whose owner inspects them after extraction instead of calling them (for
    example an ``rcu_barrier()`` marker).
    """

    __slots__ = ("func",)

    def __init__(self, func: Callable[[RcuHead], object] | None = None) -> None:
        self.func = func

    def __repr__(self) -> str:
        name = getattr(self.func, "__qualname__", None) or repr(self.func)
        return f"<{type(self).__name__} func={name} at {id(self):#x}>"


def _cmp_lt(a: int, b: int) -> bool:
    # ULONG_CMP_LT, inlined here to keep the hot paths free of cross-module calls.
    return ((a - b) & ULONG_MASK) > ULONG_MAX_HALF


@attrs.define(eq=False, repr=False)
class SegCbList:
    """One CPU's callback list (``rdp->cblist``); see the module docstring for the representation.

    Not thread-safe, like the kernel's (it is protected by the CPU's IRQ-disabled context or the
    ``nocb`` lock); in the simulation only the owning CPU task touches it.
    """

    _cbs: deque[RcuHead] = attrs.field(init=False, factory=deque)
    _seglen: list[int] = attrs.field(init=False, factory=lambda: [0, 0, 0, 0])
    _gp_seq: list[int] = attrs.field(init=False, factory=lambda: [0, 0, 0, 0])

    def __repr__(self) -> str:
        return f"SegCbList(seglen={self._seglen}, gp_seq={[hex(g) for g in self._gp_seq]})"

    def __len__(self) -> int:
        return len(self._cbs)

    # ---------------------------------------------------------------- queries

    @property
    def n_cbs(self) -> int:
        """``rcu_segcblist_n_cbs``: every callback queued, ready or not."""
        return len(self._cbs)

    def ready_cbs(self) -> bool:
        """``rcu_segcblist_ready_cbs``: is there anything to invoke right now?"""
        return self._seglen[RCU_DONE_TAIL] != 0

    def pend_cbs(self) -> bool:
        """``rcu_segcblist_pend_cbs``: is anything still waiting for (or not yet assigned) a GP?"""
        return len(self._cbs) != self._seglen[RCU_DONE_TAIL]

    def segment_lengths(self) -> tuple[int, int, int, int]:
        """Callbacks per segment, DONE first (what ``rcu_segcblist_countseq`` tracing reports)."""
        s = self._seglen
        return (s[0], s[1], s[2], s[3])

    def segment_gp_seqs(self) -> tuple[int, int, int, int]:
        """``gp_seq[]`` as stored; entries for DONE, NEXT and empty segments mean nothing."""
        g = self._gp_seq
        return (g[0], g[1], g[2], g[3])

    def first_pend_gp_seq(self) -> int | None:
        """The gp_seq the oldest waiting callbacks need (``rcu_segcblist_nextgp``), or None.

        Unlike the kernel, which returns ``gp_seq[WAIT]`` whenever anything is pending, this returns
        None when only unassigned (NEXT) callbacks exist, because then no GP number is meaningful.
        """
        if self._seglen[RCU_WAIT_TAIL]:
            return self._gp_seq[RCU_WAIT_TAIL]
        return None

    # ---------------------------------------------------------------- hot path

    def enqueue(self, head: RcuHead) -> None:
        """``rcu_segcblist_enqueue``: queue a new callback at the end of NEXT (``call_rcu``)."""
        self._cbs.append(head)
        self._seglen[RCU_NEXT_TAIL] += 1

    def extract_done(self, limit: int | None = None) -> list[RcuHead]:
        """Remove and return up to ``limit`` ready callbacks, oldest first (``rcu_do_batch``).

        The kernel extracts all of DONE and puts back what a limited pass did not invoke; taking
        only what will be invoked has the same effect. ``None`` means no limit.
        """
        n = self._seglen[RCU_DONE_TAIL]
        if limit is not None and limit < n:
            if limit < 0:
                raise SegCbListError(f"extract_done(limit={limit}): limit must be >= 0 or None")
            n = limit
        if not n:
            return []
        cbs = self._cbs
        self._seglen[RCU_DONE_TAIL] -= n
        if n == len(cbs):
            out = list(cbs)
            cbs.clear()
            return out
        pop = cbs.popleft
        return [pop() for _ in range(n)]

    # ---------------------------------------------------------------- GP bookkeeping

    def accelerate(self, snap: int) -> bool:
        """``rcu_segcblist_accelerate``: give unassigned (and over-conservative) callbacks ``snap``.

        ``snap`` must be ``rcu_seq_snap()`` of the current gp_seq: a grace period ending at ``snap``
        started after every callback now queued, so any segment waiting for ``snap`` or later, plus
        NEXT, can be merged and made to wait for exactly ``snap``. The merge target is the segment
        just after the newest non-empty WAIT/NEXT_READY segment that waits for an *earlier* GP. If
        that is NEXT itself (NEXT_READY already waits for an earlier GP), nothing can move.

        Returns True when some callbacks now wait for ``snap``, i.e. the caller must make sure a GP
        ending at ``snap`` is requested (``rcu_start_this_gp``); False when there is nothing pending
        or nothing could be assigned.
        """
        seglen = self._seglen
        if len(self._cbs) == seglen[RCU_DONE_TAIL]:
            return False
        gp_seq = self._gp_seq
        i = RCU_NEXT_READY_TAIL
        while i > RCU_DONE_TAIL:
            if seglen[i] and _cmp_lt(gp_seq[i], snap):
                break
            i -= 1
        if i == RCU_NEXT_READY_TAIL:
            return False  # NEXT_READY waits for an earlier GP: no segment is free for snap
        i += 1
        rest = sum(seglen[i:])
        if not rest:
            return False  # nothing queued after segment i - 1
        seglen[i] = rest
        for j in range(i + 1, RCU_CBLIST_NSEGS):
            seglen[j] = 0
        for j in range(i, RCU_NEXT_TAIL):
            gp_seq[j] = snap
        return True

    def advance(self, completed_seq: int) -> None:
        """``rcu_segcblist_advance``: move segments whose GP ended by ``completed_seq`` to DONE.

        Segments are checked oldest first and the scan stops at the first one still waiting, so
        order is kept; the survivors then slide down so that WAIT is never empty while NEXT_READY
        is not. NEXT is never touched: callbacks without a GP number cannot become ready here.
        """
        seglen = self._seglen
        if len(self._cbs) == seglen[RCU_DONE_TAIL]:
            return
        gp_seq = self._gp_seq
        i = RCU_WAIT_TAIL
        while i < RCU_NEXT_TAIL:
            if _cmp_lt(completed_seq, gp_seq[i]):
                break
            seglen[RCU_DONE_TAIL] += seglen[i]
            seglen[i] = 0
            i += 1
        if i == RCU_WAIT_TAIL:
            return
        # Slide still-waiting segments into the gap (only NEXT_READY → WAIT can apply).
        j = RCU_WAIT_TAIL
        while i < RCU_NEXT_TAIL:
            if not seglen[i] and not seglen[RCU_NEXT_TAIL]:
                break
            seglen[j] = seglen[i]
            gp_seq[j] = gp_seq[i]
            seglen[i] = 0
            i += 1
            j += 1

    def entrain(self, head: RcuHead) -> bool:
        """``rcu_segcblist_entrain``: queue ``head`` so it runs after everything already queued.

        Used by ``rcu_barrier()``. The head joins the newest non-empty segment, sharing its GP
        number (or DONE if only DONE is occupied), so it needs no grace period of its own beyond
        what the callbacks ahead of it wait for. An empty list takes nothing and returns False:
        the kernel's barrier then does not wait for this CPU at all.
        """
        cbs = self._cbs
        if not cbs:
            return False
        seglen = self._seglen
        i = RCU_NEXT_TAIL
        while i > RCU_DONE_TAIL and not seglen[i]:
            i -= 1
        cbs.append(head)
        seglen[i] += 1
        return True

    def merge_from(self, other: SegCbList) -> None:
        """``rcu_segcblist_merge``: adopt an offlined CPU's callbacks (CPU-hotplug migration).

        ``other``'s ready callbacks go to the *front* of our DONE segment (they were ready first);
        its pending ones, whatever GP they waited for, go to the end of our NEXT segment, so they
        cannot run early: they become ready only after this list re-accelerates them against the
        current gp_seq. ``other`` is left empty. Never loses a callback; keeps ``other``'s order.
        """
        if other is self:
            raise SegCbListError("merge_from(): a callback list cannot be merged into itself")
        src = other._cbs
        if not src:
            return
        n_done = other._seglen[RCU_DONE_TAIL]
        cbs = self._cbs
        if n_done:
            pop = src.popleft
            cbs.extendleft(reversed([pop() for _ in range(n_done)]))
            self._seglen[RCU_DONE_TAIL] += n_done
        n_pend = len(src)
        if n_pend:
            cbs.extend(src)
            self._seglen[RCU_NEXT_TAIL] += n_pend
        src.clear()
        other._seglen[:] = [0, 0, 0, 0]

    # ---------------------------------------------------------------- debugging

    def check_invariants(self) -> None:
        """Raise SimulationError if the list is in a state the kernel's code could never produce.

        Checks: segment lengths are non-negative and add up to the queue length; "RCU_WAIT_TAIL
        cannot be empty unless RCU_NEXT_READY_TAIL is also empty"; a non-empty NEXT_READY never
        waits for an earlier GP than a non-empty WAIT.
        """
        seglen = self._seglen
        if any(n < 0 for n in seglen) or sum(seglen) != len(self._cbs):
            raise SimulationError(
                f"segcblist lengths {seglen} do not add up to the {len(self._cbs)} queued callbacks"
            )
        if not seglen[RCU_WAIT_TAIL] and seglen[RCU_NEXT_READY_TAIL]:
            raise SimulationError(
                f"segcblist has an empty WAIT segment but {seglen[RCU_NEXT_READY_TAIL]} callbacks "
                "in NEXT_READY; WAIT may only be empty when NEXT_READY is too"
            )
        gp = self._gp_seq
        if seglen[RCU_WAIT_TAIL] and seglen[RCU_NEXT_READY_TAIL] and _cmp_lt(gp[2], gp[1]):
            raise SimulationError(
                f"segcblist NEXT_READY waits for gp_seq {gp[2]:#x}, earlier than WAIT's "
                f"{gp[1]:#x}; "
                "gp_seq must be non-decreasing from WAIT to NEXT_READY"
            )


@attrs.define
class BatchLimits:
    """How many ready callbacks one ``rcu_do_batch`` pass may invoke: ``rdp->blimit`` and its marks.

    The kernel caps a pass at ``blimit`` (10) so that callback invocation does not hog the CPU, but
    once more than ``qhimark`` (10000) callbacks are queued the cap is raised to
    ``DEFAULT_MAX_RCU_BLIMIT`` (10000) so the backlog can drain, and it comes back only when the
    queue falls to ``qlowmark`` (100) or fewer. The gap between the marks is hysteresis, so this
    object carries state: ``current`` is ``rdp->blimit``, one instance per CPU. A pass also takes
    ``pending >> rcu_divisor`` when that is more (``bl = max(rdp->blimit, pending >> rcu_divisor)``
    in ``rcu_do_batch``, v5.5+; v5.9 and v6.1 ``kernel/rcu/tree.c``). (kernel.md §6, "Batch
    limits".)
    """

    blimit: int = 10
    qhimark: int = 10000
    qlowmark: int = 100
    rcu_divisor: int = DEFAULT_RCU_DIVISOR
    current: int = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.blimit < 1:
            raise ConfigError(f"blimit={self.blimit}: must be >= 1 callbacks per pass")
        if self.qlowmark < 0:
            raise ConfigError(f"qlowmark={self.qlowmark}: must be >= 0")
        if self.qhimark <= self.qlowmark:
            raise ConfigError(
                f"qhimark={self.qhimark} must be greater than qlowmark={self.qlowmark}"
            )
        if not 0 <= self.rcu_divisor <= 62:
            raise ConfigError(f"rcu_divisor={self.rcu_divisor}: must be in 0 .. 62")
        self.current = self.blimit

    @property
    def raised(self) -> bool:
        """True while the backlog rule has raised the per-pass cap."""
        return self.current == DEFAULT_MAX_RCU_BLIMIT

    def limit_for(self, n_pending: int) -> int:
        """The cap for a pass that starts with ``n_pending`` callbacks queued on this CPU.

        Above ``qhimark`` the cap is raised (the kernel does this when ``call_rcu`` sees the queue
        grow past it); at or below ``qlowmark`` it is restored (the kernel does this at the end of a
        batch); in between, whatever was in force stays in force.
        """
        if n_pending > self.qhimark:
            self.current = DEFAULT_MAX_RCU_BLIMIT
        elif n_pending <= self.qlowmark:
            self.current = self.blimit
        return max(self.current, n_pending >> self.rcu_divisor)
