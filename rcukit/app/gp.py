"""Grace-period bookkeeping for the application domain, on the shared :class:`GpCore`.

:class:`~rcukit.rcu.gpcore.GpCore` is the clock-agnostic engine the simulated kernel uses too:
``gp_seq`` in the kernel's encoding, the outstanding request (``gp_seq_needed``), the waiter heap
and the polled-API arithmetic (kernel.md §6). This adds what the application domain needs on top:
one :class:`anyio.Event` per target ``gp_seq``, so that every ``synchronize_rcu()`` caller that
needs the same grace period shares it (liburcu's "batch concurrent synchronize_rcu", folly's
TurnSequencer), and a cached ``rcu_seq_snap()`` that kvfree_rcu's slow path stamps blocks with.
"""

from __future__ import annotations

import anyio

from rcukit.app.loop import EventLoop
from rcukit.rcu.gpcore import GpCore

__all__ = ["GpState"]


class GpState:
    """One domain's grace periods: the shared core plus per-target events."""

    __slots__ = ("_events", "_loop", "core", "snap")

    def __init__(self, initial_gp_seq: int, loop: EventLoop) -> None:
        self._loop = loop
        #: Waiters in the core are the targets themselves; the events live in ``_events``.
        #: ``gp_seq`` itself is ``core.gp_seq`` (an :class:`~rcukit.rcu.gpcore.RcuSeq`).
        self.core: GpCore[int] = GpCore(initial_gp_seq)
        self._events: dict[int, anyio.Event] = {}
        #: ``rcu_seq_snap(gp_seq)``, refreshed whenever ``gp_seq`` moves.
        self.snap = self.core.gp_seq.snap()

    def done(self, cookie: int) -> bool:
        """``poll_state_synchronize_rcu(cookie)``: has a full GP elapsed since the cookie?"""
        return self.core.poll(cookie)

    def request(self, target: int) -> bool:
        """``rcu_start_this_gp``; True if a grace period (beyond a running one) is needed."""
        return self.core.request_gp(target)

    def needs_gp(self) -> bool:
        return self.core.gp_needed()

    def start(self) -> None:
        self.core.gp_seq.start()
        self.snap = self.core.gp_seq.snap()

    def end(self) -> None:
        """``rcu_gp_cleanup``: the GP is over; set the events of the targets it reached."""
        events = self._events
        for target in self.core.gp_seq.end():
            ev = events.pop(target, None)
            if ev is not None:
                ev.set()
        self.snap = self.core.gp_seq.snap()

    def waiter(self, target: int) -> tuple[anyio.Event, bool]:
        """The event set when ``gp_seq`` reaches ``target``, and whether it was already shared.

        The caller has checked that ``target`` is not done yet.
        """
        ev = self._events.get(target)
        if ev is not None:
            return ev, True
        ev = self._events[target] = self._loop.event()
        if not self.core.gp_seq.add_waiter(target, target):
            del self._events[target]
            ev.set()
        return ev, False

    def kick_waiters(self, target: int) -> None:
        """Wake the waiters for ``target`` early (one of them must raise); the rest re-wait."""
        ev = self._events.pop(target, None)
        if ev is not None:
            ev.set()

    def release_all_waiters(self) -> None:
        """Set every event whatever its target: the machinery stopped and waiters must notice."""
        events, self._events = self._events, {}
        for ev in events.values():
            ev.set()
