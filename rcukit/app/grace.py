"""The domain's grace periods: ``synchronize_rcu``, the polled API and the GP task.

The GP task is the domain's ``rcu_gp_kthread``: it sleeps until someone needs a GP
(``gp_seq_needed``), then ``rcu_seq_start``, flips the reader phase, sleeps until the old
phase's readers have left and every online QSBR worker has reported (both wake it; nothing
polls), and ``rcu_seq_end``, waking whoever waited for that ``gp_seq``. The sequence arithmetic
and the waiters live in :class:`~rcukit.app.gp.GpState`; the read side in
:class:`~rcukit.app.readers.Readers`. What the rest of the domain must do when ``gp_seq`` moves
(kvfree_rcu grants, the callback task) it learns through the two hooks it passes in.

Two things keep a grace period from hanging silently (kernel.md's stall warnings, and the
kernel's ``might_sleep()`` inside ``rcu_read_lock()``):

* **Self-deadlock.** A task that waits for a grace period (``synchronize_rcu``, the barriers,
  ``kvfree_rcu_wait``) from inside its own read section would wait for itself. The read side
  cannot afford to record which task holds a section, so the check is on the waiting side:
  when the GP task finds the old phase still held, it looks at each waiting task's suspended
  coroutines for a ``with`` on one of this domain's read sections (:func:`holds_with`) and wakes
  those tasks with :class:`~rcukit.errors.RcuUsageError`, in every mode.
* **Stall warnings** (``rcu_cpu_stall_timeout``): a GP that waits longer than
  ``stall_timeout`` logs (logger ``rcukit``) who holds it — tasks and ``read_lock`` sites in
  debug mode, counts otherwise — and repeats every three timeouts, as
  ``print_other_cpu_stall()`` re-arms ``jiffies_stall`` (kernel/rcu/tree_stall.h, v6.1).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

import anyio
import attrs

from rcukit.app.gp import GpState
from rcukit.app.loop import EventLoop, holds_with
from rcukit.app.readers import QsbrWorker, QuiescentWhileWaiting, Readers
from rcukit.app.status import DomainStatus
from rcukit.app.wakeup import Wakeup
from rcukit.errors import RcuArgumentError, RcuClosedError, RcuUsageError

__all__ = ["GracePeriods", "Sleeper", "check_cookie"]

logger = logging.getLogger("rcukit")

#: ``print_other_cpu_stall()``: the next warning comes three timeouts after the last.
STALL_REPEAT_FACTOR = 3


class Sleeper:
    """A task waiting for a grace period (directly or through a barrier or the cap)."""

    __slots__ = ("checked", "coro", "deadlock", "wake", "what")

    def __init__(self, what: str, coro: object, wake: Callable[[], None]) -> None:
        self.what = what
        self.coro = coro
        #: Wakes the task early (it then raises): the GP it waits for needs it to leave first.
        self.wake = wake
        self.deadlock = False
        self.checked = False

    def refuse(self) -> RcuUsageError:
        return RcuUsageError(
            f"{self.what} inside one of the domain's RCU read sections held by the calling "
            "task: it would wait for a grace period that waits for this very reader "
            "(deadlock); leave the read section first"
        )


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
    loop: EventLoop
    _readers: Readers
    #: The GP task's wakeup (``readers`` sets it when the old phase drains).
    _wake: Wakeup
    _status: DomainStatus
    #: Called after ``gp_seq`` moved at a GP's start, and at its end.
    _on_start: Callable[[], None]
    _on_end: Callable[[], None]
    #: ``rcu_cpu_stall_timeout`` in seconds; None: no stall warnings.
    stall_timeout: float | None = None
    #: Waits for a GP, and how many of them shared one another caller asked for.
    sync_waits: int = attrs.field(default=0, init=False)
    sync_shared: int = attrs.field(default=0, init=False)
    #: Tasks waiting for a GP, for the self-deadlock check; and stall warnings issued.
    sleepers: set[Sleeper] = attrs.field(factory=set, init=False)
    stalls: int = attrs.field(default=0, init=False)

    def request_gp(self, target: int) -> None:
        """``rcu_start_this_gp``: make sure a GP reaching ``target`` will run."""
        if self.state.request(target):
            self._wake.set()

    async def wait_gp(
        self, target: int, worker: QsbrWorker | None, what: str = "synchronize_rcu()"
    ) -> None:
        """Wait until ``gp_seq`` reaches ``target``; ``worker`` is quiescent meanwhile."""
        gp = self.state
        if gp.done(target):
            await self.loop.checkpoint()
            return
        self.request_gp(target)
        ev, shared = gp.waiter(target)
        self.sync_waits += 1
        if shared:
            self.sync_shared += 1
        me = self.sleeper(what, lambda: gp.kick_waiters(target))
        try:
            with QuiescentWhileWaiting(worker):
                while True:
                    await ev.wait()
                    if gp.done(target) or me.deadlock or self._status.dead or self._status.closed:
                        break
                    ev, _ = gp.waiter(target)  # another waiter's early wake: sleep again
        finally:
            self.sleepers.discard(me)
        if me.deadlock:
            raise me.refuse()
        if not gp.done(target):
            self._status.check_open(what)
            raise RcuClosedError("the RCU domain stopped before the grace period ended")

    def sleeper(self, what: str, wake: Callable[[], None]) -> Sleeper:
        """Register the current task as waiting for a GP (see the module docstring).

        If a GP is already waiting for readers, its task looks again: the new sleeper may be
        one of the readers it waits for.
        """
        me = Sleeper(what, self.loop.current_coro(), wake)
        self.sleepers.add(me)
        if self._readers.old is not None:
            self._wake.set()
        return me

    async def synchronize_rcu(self, what: str, cookie: int | None = None) -> None:
        """Wait for a GP after ``cookie`` (a fresh snapshot if None), on behalf of ``what``."""
        if not self.loop.in_loop_thread():
            self.loop.refuse_thread(what, f"rcu.from_thread.{what}")
        worker = self._readers.might_sleep(what)
        self._status.check_open(what)
        await self.wait_gp(self.state.snap if cookie is None else cookie, worker, what)

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
        """Until the old phase is empty and every online QSBR worker has reported.

        The waiter is armed *before* the check: a reader leaving in a worker thread stores its
        count and then looks for a waiter, so one of the two always sees the other.
        """
        r = self._readers
        r.arm()
        if r.gp_may_end():
            return
        timeout = self.stall_timeout
        stall_at = math.inf if timeout is None else self.loop.current_time() + timeout
        while True:
            if self.sleepers:
                self.check_self_deadlock()
            if stall_at == math.inf:
                await self._wake.wait()
            else:
                with anyio.move_on_after(stall_at - self.loop.current_time()):
                    await self._wake.wait()
                if self.loop.current_time() >= stall_at and not r.gp_may_end():
                    self.report_stall(stall_at - (timeout or 0.0))
                    stall_at = self.loop.current_time() + STALL_REPEAT_FACTOR * (timeout or 0.0)
            r.arm()
            if r.gp_may_end():
                return

    def check_self_deadlock(self) -> None:
        """Wake every waiting task that holds one of this domain's read sections."""
        ours = self._readers.is_held_section
        for s in list(self.sleepers):
            if s.checked:
                continue
            s.checked = True
            if holds_with(s.coro, ours):
                s.deadlock = True
                self.sleepers.discard(s)
                s.wake()

    def report_stall(self, since: float) -> None:
        """``print_other_cpu_stall()``: who holds the grace period, logged, never raised."""
        self.stalls += 1
        waited = self.loop.current_time() - since
        seq = self.state.core.gp_seq.current
        logger.warning(
            "rcukit: RCU grace period stall: gp_seq %#x has waited %.1fs for %s "
            "(stall_timeout=%ss; %d task(s) waiting for it)",
            seq,
            waited,
            self._readers.stall_report(),
            self.stall_timeout,
            len(self.sleepers),
        )

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
