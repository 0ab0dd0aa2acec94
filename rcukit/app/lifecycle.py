"""A domain's life: starting its two tasks, closing cleanly, closing after an abort.

Leaving the ``async with`` block normally runs ``rcu_barrier()`` and ``kvfree_rcu_barrier()`` until
nothing is pending, for at most ``close_timeout`` seconds: a reader that never leaves, or callbacks
that keep queueing callbacks, then make the exit report what is still pending and raise
:class:`~rcukit.errors.RcuLeakError` rather than hang. (Each barrier waits only for work queued
before it, as the kernel's does, so chained callbacks cannot stall one barrier.) Leaving it by an
exception or a cancellation stops accepting work, then (shielded, bounded by ``close_timeout``)
waits for the readers still inside a section, runs one last grace period inline and releases
everything; if readers never leave, what could not be released is reported as an
:class:`~rcukit.errors.RcuLeakError` instead. If a task stops while the domain is open (its nursery
was cancelled), the domain is *dead*: every waiter wakes and raises, since no grace period can
complete any more.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import attrs

from rcukit.app.backpressure import PendingCap
from rcukit.app.callbacks import Callbacks
from rcukit.app.config import DomainConfig
from rcukit.app.grace import GracePeriods
from rcukit.app.kvfree_host import DomainKvfree
from rcukit.app.readers import Readers
from rcukit.app.status import DomainStatus, ErrorLog
from rcukit.errors import RcuLeakError

__all__ = ["FLUSH_ROUNDS", "DomainLifecycle"]

#: Barrier rounds a normal exit runs before it leaves work that callbacks keep queueing to the
#: final grace period (a finite chain of callbacks queueing callbacks up to this deep drains).
FLUSH_ROUNDS = 4


@attrs.define(eq=False)
class DomainLifecycle:
    """Starts and stops one domain's tasks and drains its parts (see the module docstring)."""

    #: ``close_timeout`` bounds the drain after an abort; ``debug`` adds holders to leak reports.
    _config: DomainConfig
    _status: DomainStatus
    _errors: ErrorLog
    _readers: Readers
    _gp: GracePeriods
    _callbacks: Callbacks
    _kvfree: DomainKvfree
    _cap: PendingCap
    _scopes: list[anyio.CancelScope] = attrs.field(factory=list, init=False)
    _task_done: list[anyio.Event] = attrs.field(factory=list, init=False)

    async def start(self, nursery: Any) -> None:
        """Start the two tasks in ``nursery``: an AnyIO task group or a Trio nursery."""
        await nursery.start(self._run_task, "grace-period", self._gp.rcu_gp_kthread)
        await nursery.start(self._run_task, "callback", self._rcu_core_kthread)
        self._status.accepting = True

    async def _rcu_core_kthread(self) -> None:
        await self._callbacks.rcu_core_kthread(self._kvfree)

    async def _run_task(
        self,
        which: str,
        body: Callable[[], Awaitable[None]],
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run one of the domain's tasks, shielded: only :meth:`shutdown` stops it."""
        done = self._gp.loop.event()
        self._task_done.append(done)
        try:
            with anyio.CancelScope(shield=True) as cs:
                self._scopes.append(cs)
                task_status.started()
                await body()
        finally:
            self._task_exited(which)
            done.set()

    def _task_exited(self, which: str) -> None:
        st = self._status
        if st.stopping:
            return
        # Cancelled (or crashed) while the domain was open: wake every waiter so it raises.
        st.dead = (
            f"the RCU domain's {which} task has stopped (was its nursery cancelled?); "
            "the domain cannot complete grace periods any more"
        )
        st.accepting = False
        self._gp.release_waiters()
        self._callbacks.release_barriers()
        self._kvfree.release_barriers()
        self._cap.room_changed()

    async def flush(self) -> bool:
        """Normal exit: barriers until nothing is pending, for ``close_timeout`` at most.

        Returns False if the time ran out (readers that never left, or callbacks that keep
        queueing callbacks); :meth:`shutdown` then reports what is left.
        """
        self._status.closing = True
        rounds = 0
        with anyio.move_on_after(self._config.close_timeout):
            while self._status.dead is None:
                before = self._pending()
                await self._callbacks.rcu_barrier()
                await self._kvfree.kvfree_rcu_barrier()
                rounds += 1
                left = self._pending()
                # Each barrier waits only for work queued before it; work that callbacks keep
                # queueing (a chain that never ends) is left to the final grace period.
                if not left or (left >= before and rounds >= FLUSH_ROUNDS):
                    break
            return True
        return False

    def _pending(self) -> int:
        self._kvfree.settle(drop_grants=False)
        return self._callbacks.queued + self._kvfree.pending

    async def shutdown(self, aborted: bool, patience: float | None = None) -> RcuLeakError | None:
        """Stop accepting work, stop the tasks, release everything (call shielded)."""
        st = self._status
        st.accepting = False
        st.stopping = True
        self._callbacks.stop()
        self._kvfree.settle(drop_grants=True)
        for cs in self._scopes:
            cs.cancel()
        for ev in self._task_done:
            await ev.wait()
        st.dead = None  # whatever stopped the tasks, the domain is now simply closing
        if patience is None:
            patience = self._config.close_timeout
        try:
            return await self._final_drain(patience, report=aborted)
        finally:
            st.closed = True
            self._readers.close()
            self._gp.release_waiters()
            self._callbacks.release_barriers()
            self._cap.release_all()

    async def _final_drain(self, patience: float, report: bool) -> RcuLeakError | None:
        gp = self._gp
        cbs = self._callbacks
        kv = self._kvfree
        kv.settle(drop_grants=True)
        if not cbs.queued and not kv.pending:
            return None
        with anyio.move_on_after(patience):
            first = True
            while True:
                if gp.state.core.gp_seq.in_progress():
                    await gp.gp_wait_readers()
                    gp.gp_end()
                if not cbs.prepare_final_gp() and not first:
                    break
                first = False
                await gp.run_gp()
            # A full grace period has elapsed since the domain stopped accepting work: all of
            # it is safe to release.
            cbs.invoke_all_ready()
            kv.release_everything()
            return None
        return self._report_leak(report)

    def _report_leak(self, report: bool) -> RcuLeakError | None:
        """What could not be released: reported (aborted exit) or returned to be raised."""
        r = self._readers
        n_cbs = self._callbacks.pending
        self._kvfree.settle(drop_grants=True)
        n_kv = self._kvfree.pending
        holders = ""
        if self._config.debug:
            sites = [s.site for s in r.held_sections()]
            if sites:
                holders = "; read sections held from: " + ", ".join(sites[:10])
        online = r.online_sites()
        if online:
            holders += "; QSBR workers online, registered at: " + ", ".join(online[:10])
        leak = RcuLeakError(
            f"RCU domain closed but its readers did not leave within close_timeout="
            f"{self._config.close_timeout}s ({r.n_readers} read sections held, {r.n_online} "
            f"QSBR workers online): {n_cbs} call_rcu callbacks were not invoked and {n_kv} "
            f"kvfree_rcu objects were not released{holders}"
        )
        self._callbacks.drop_all()
        self._kvfree.drop_everything()
        if report:
            self._errors.report(leak, "reported by the closing RCU domain")
            return None
        return leak
