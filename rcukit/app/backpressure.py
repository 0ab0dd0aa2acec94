"""The domain's cap on pending work: ``call_rcu`` callbacks plus kvfree_rcu objects.

Memory stays bounded only if both ways of deferring work count against one cap
(``max_pending``). Each fast path takes room in advance (a *grant*) so that it only has to count;
:meth:`PendingCap.room` takes idle grants back when the cap is near. The two users are the
callback list and the kvfree_rcu queues, each behind the small :class:`CapUser` interface.

A second, optional cap counts *bytes* (``max_pending_bytes``): only kvfree_rcu objects have a
weight, and a weighed insert always takes the slow path (no grants), so the byte count is exact.
Hitting it has the object cap's consequences: the same error, the same kick, the same waiters.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from rcukit.app.loop import EventLoop
from rcukit.errors import RcuBackpressureError

__all__ = ["CapUser", "PendingCap"]


class CapUser(Protocol):
    """One kind of pending work, as the cap sees it."""

    def cap_load(self) -> int:
        """Pending items plus the room granted to the fast path and not yet used."""
        ...

    def cap_reserved(self) -> int:
        """The granted room alone."""
        ...

    def cap_withdraw(self) -> None:
        """Give every grant back (``cap_reserved()`` becomes 0)."""
        ...

    def cap_pressure(self) -> None:
        """The cap was hit: get this work moving (a GP, a drain)."""
        ...


class PendingCap:
    """``max_pending`` over every :class:`CapUser`, and the tasks waiting for room."""

    __slots__ = (
        "_loop",
        "_room",
        "_users",
        "backpressure",
        "max_pending",
        "max_pending_bytes",
        "pending_bytes",
    )

    def __init__(
        self, max_pending: int, loop: EventLoop, max_pending_bytes: int | None = None
    ) -> None:
        self._loop = loop
        #: Set (and replaced) when room may have appeared; every waiter sleeps on it.
        self._room: anyio.Event | None = None
        self.max_pending = max_pending
        #: The byte cap (None: none) and the weighed bytes queued and not yet released.
        self.max_pending_bytes = max_pending_bytes
        self.pending_bytes = 0
        #: Times a caller hit the cap (raised, or waited).
        self.backpressure = 0
        self._users: list[CapUser] = []

    def add_user(self, user: CapUser) -> None:
        self._users.append(user)

    def room(self, want: int) -> int:
        """How much of ``want`` fits under the pending cap, reclaiming idle reservations."""
        users = self._users
        room = self.max_pending - sum(u.cap_load() for u in users)
        if room < want and any(u.cap_reserved() for u in users):
            for u in users:
                u.cap_withdraw()
            room = self.max_pending - sum(u.cap_load() for u in users)
        return max(0, min(want, room))

    def bytes_fit(self, nbytes: int) -> bool:
        """Does an object of ``nbytes`` fit under the byte cap (always, without one)?"""
        cap = self.max_pending_bytes
        return cap is None or self.pending_bytes + nbytes <= cap

    def cap_error_bytes(self, what: str, nbytes: int, instead: str) -> RcuBackpressureError:
        return RcuBackpressureError(
            f"{what}: an object of {nbytes} bytes does not fit under the domain's cap of "
            f"max_pending_bytes={self.max_pending_bytes} ({self.pending_bytes} bytes of "
            f"kvfree_rcu objects await a grace period); use `{instead}` to wait for room, "
            "call rcu.flush() to start reclaim now, or raise max_pending_bytes in open_domain()"
        )

    def flush(self) -> None:
        """Start reclaim now: every user gets its work moving, as at the cap (not counted)."""
        for u in self._users:
            u.cap_pressure()

    def cap_error(self, what: str, instead: str) -> RcuBackpressureError:
        return RcuBackpressureError(
            f"{what}: the domain's cap of max_pending={self.max_pending} callbacks and "
            f"kvfree_rcu objects awaiting a grace period is reached; use `{instead}` to wait "
            "for room, or raise max_pending in open_domain()"
        )

    def note_backpressure(self) -> None:
        """Count a cap hit and get things moving: GPs for callbacks, drains for kvfree."""
        self.backpressure += 1
        self.flush()

    async def wait_for_room(self) -> None:
        ev = self._room
        if ev is None:
            ev = self._room = self._loop.event()
        await ev.wait()

    def room_changed(self) -> None:
        ev = self._room
        if ev is not None:
            self._room = None
            ev.set()

    def release_all(self) -> None:
        """The domain closed: nobody gets room any more; waiters wake and raise."""
        self.room_changed()
