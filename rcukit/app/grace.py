"""The domain's grace periods: ``synchronize_rcu``, the polled API and the GP task.

The GP task is the domain's ``rcu_gp_kthread``: it sleeps until someone needs a GP
(``gp_seq_needed``), then ``rcu_seq_start``, flips the reader phase, sleeps until the old
phase's readers have left and every online QSBR worker has reported (both wake it; nothing
polls), and ``rcu_seq_end``, waking whoever waited for that ``gp_seq``. The sequence arithmetic
and the waiters live in :class:`~rcukit.app.gp.GpState`; the read side in
:class:`~rcukit.app.readers.Readers`. What the rest of the domain must do when ``gp_seq`` moves
(kvfree_rcu grants, the callback task) it learns through the two hooks it passes in.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs
import trio

from rcukit.app.gp import GpState
from rcukit.app.readers import QsbrWorker, QuiescentWhileWaiting, Readers
from rcukit.app.status import DomainStatus
from rcukit.app.wakeup import Wakeup
from rcukit.errors import RcuArgumentError, RcuClosedError

__all__ = ["GracePeriods", "check_cookie"]


def check_cookie(cookie: object) -> int:
    """A polled-API cookie must be an int from ``get_state``/``start_poll``."""
    if isinstance(cookie, bool) or not isinstance(cookie, int):
        raise RcuArgumentError(
            f"cookie={cookie!r}: expected an int from get_state_synchronize_rcu() or "
            "start_poll_synchronize_rcu()"
        )
    return cookie


@attrs.define(eq=False)
class GracePeriods:
    """One domain's grace-period machinery (see the module docstring)."""

    state: GpState
    _readers: Readers
    #: The GP task's wakeup (``readers`` sets it when the old phase drains).
    _wake: Wakeup
    _status: DomainStatus
    #: Called after ``gp_seq`` moved at a GP's start, and at its end.
    _on_start: Callable[[], None]
    _on_end: Callable[[], None]
    #: Waits for a GP, and how many of them shared one another caller asked for.
    sync_waits: int = attrs.field(default=0, init=False)
    sync_shared: int = attrs.field(default=0, init=False)

    def request_gp(self, target: int) -> None:
        """``rcu_start_this_gp``: make sure a GP reaching ``target`` will run."""
        if self.state.request(target):
            self._wake.set()

    async def wait_gp(self, target: int, worker: QsbrWorker | None) -> None:
        """Wait until ``gp_seq`` reaches ``target``; ``worker`` is quiescent meanwhile."""
        gp = self.state
        if gp.done(target):
            await trio.lowlevel.checkpoint()
            return
        self.request_gp(target)
        ev, shared = gp.waiter(target)
        self.sync_waits += 1
        if shared:
            self.sync_shared += 1
        with QuiescentWhileWaiting(worker):
            await ev.wait()
        if not gp.done(target):
            self._status.check_open("synchronize_rcu()")
            raise RcuClosedError("the RCU domain stopped before the grace period ended")

    async def synchronize_rcu(self, what: str, cookie: int | None = None) -> None:
        """Wait for a GP after ``cookie`` (a fresh snapshot if None), on behalf of ``what``."""
        worker = self._readers.might_sleep(what)
        self._status.check_open(what)
        await self.wait_gp(self.state.snap if cookie is None else cookie, worker)

    def start_poll(self) -> int:
        self._status.check_open("start_poll_synchronize_rcu()")
        snap = self.state.snap
        self.request_gp(snap)
        return snap

    # ---------------------------------------------------------------- one grace period

    def gp_start(self) -> None:
        """``rcu_gp_init``: ``rcu_seq_start``, then new readers go to the other phase."""
        self.state.start()
        self._readers.flip()
        self._on_start()

    async def gp_wait_readers(self) -> None:
        """Until the old phase is empty and every online QSBR worker has reported."""
        r = self._readers
        while not r.gp_may_end():
            r.arm()
            await self._wake.wait()

    def gp_end(self) -> None:
        """``rcu_gp_cleanup``: forget the old phase, ``rcu_seq_end`` (waking its waiters)."""
        self._readers.end_gp()
        self.state.end()
        self._on_end()

    async def run_gp(self) -> None:
        """One whole grace period: the GP task's loop body, and the closing drain's."""
        self.gp_start()
        await self.gp_wait_readers()
        self.gp_end()

    async def rcu_gp_kthread(self) -> None:
        """The GP task's body: one grace period per request, forever."""
        gp = self.state
        while True:
            while not gp.needs_gp():
                await self._wake.wait()
            await self.run_gp()

    def release_waiters(self) -> None:
        """The machinery stopped: every ``synchronize_rcu`` caller wakes (and raises)."""
        self.state.release_all_waiters()
