"""Expedited grace periods: ``kernel/rcu/tree_exp.h`` on the simulated CPUs.

:class:`RcuExp` holds what ``tree_exp.h`` keeps for one ``rcu_state``: the expedited holdouts
(``rnp->expmask`` and ``rnp->exp_tasks``), the task driving the current expedited GP and the
start and end fences of the expedited sequence (:mod:`rcukit.rcu.tree_fence`).

An expedited GP is driven by its caller (``rcu_exp_sel_wait_wake``): it "IPIs" every non-idle
CPU. A CPU whose clock has run past the IPI is quiescent at the first instant after it that
it was outside any read section (each CPU remembers when it last entered or left one), so
the expedited GP costs ``expedited_ipi_ns`` per CPU instead of a tick per CPU; a CPU caught
inside a reader reports when that reader leaves (``rcu_report_exp_rdp``), a blocked reader when
it leaves its section (``rcu_report_exp_rnp``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rcukit.rcu.gpcore import signed_seq
from rcukit.rcu.tree_fence import Holdouts, StartFence, wait_until
from rcukit.rcu.tree_part import RcuStatePart
from rcukit.sched.sim import WaitQueue

if TYPE_CHECKING:
    from rcukit.rcu.tree import RcuData, RcuState
    from rcukit.sched.sim import Cpu, Task

__all__ = ["RcuExp"]


class RcuExp(RcuStatePart):
    """The expedited grace periods of one ``rcu_state`` (``kernel.rcu.exp``)."""

    def __init__(self, rcu: RcuState) -> None:
        super().__init__(rcu)
        #: ``rcu_state.expedited_sequence``.
        self._seq = rcu.core.expedited_sequence
        self._ipi_ns = rcu.kernel.config.cost.expedited_ipi_ns
        #: ``rnp->expmask`` and ``rnp->exp_tasks``.
        self.holdouts = Holdouts("rcu_exp_wait")
        self._start = StartFence()
        self._driver: Task | None = None

    def exp_snap(self, t: int) -> int:
        """``rcu_exp_gp_seq_snap`` as read at local time ``t`` (recorded as a start fence)."""
        return self._start.record(self._seq.snap(assume_started=self._start.announced), t)

    async def synchronize_rcu_expedited(self, task: Task) -> None:
        """``synchronize_rcu_expedited``: drive expedited GPs, or wait for the driver's."""
        self._rcu._may_block(task, "synchronize_rcu_expedited")
        await task.sync()
        seq = self._seq
        s = self.exp_snap(task.now_ns)
        while not seq.done(s):
            if self._driver is None:
                await self.rcu_exp_sel_wait_wake(task, s)
            else:
                wq = WaitQueue("synchronize_rcu_expedited")
                if seq.add_waiter(s, wq.wake_all):
                    await task.block(wq, "rcu_exp_wait")

    async def rcu_exp_sel_wait_wake(self, task: Task, s: int) -> None:
        """``rcu_exp_sel_wait_wake``: run expedited GPs until every waiter is served."""
        seq = self._seq
        start = self._start
        self._driver = task
        try:
            while not seq.done(s) or seq.n_waiters():
                start.announced = True
                await wait_until(task, start.consume(seq.snap()))
                await task.sync()
                start.announced = False
                self.sync_rcu_exp_select_cpus(task)
                await self.rcu_exp_wait_wake(task)
        finally:
            self._driver = None
            start.announced = False

    def sync_rcu_exp_select_cpus(self, task: Task) -> None:
        """``sync_rcu_exp_select_cpus``: start the GP and IPI every other non-idle CPU."""
        now = task.now_ns
        seq = self._seq.start()
        holdouts = self.holdouts
        holdouts.end_fence = now
        rcu = self._rcu
        if self._kernel.tracer.tp.rcu_exp_grace_period:
            self._kernel.trace(task, "rcu_exp_grace_period", f"{rcu.name} {signed_seq(seq)} start")
        ipi_ns = self._ipi_ns
        me = task.cpu
        cpus = self._kernel.sim.cpus
        for cpu_id in sorted(rcu._nonidle):
            cpu = cpus[cpu_id]
            if cpu is me:
                continue  # a CPU going down is still asked: its clock may be ahead
            task.charge(ipi_ns)
            qs_at = self.rcu_exp_handler(cpu, task.now_ns)
            if qs_at is not None:
                holdouts.fence(qs_at)
            else:
                self._rdp[cpu_id].exp_qs_pending = True
                holdouts.cpus.add(cpu_id)
                cpu.need_resched = True
        holdouts.tasks.update(rcu.readers.blocked)

    def rcu_exp_handler(self, cpu: Cpu, sent: int) -> int | None:
        """``rcu_exp_handler``: when ``cpu`` was quiescent at or after the IPI ``sent``, or None.

        The CPU's clock may be past ``sent``: its QS is the first instant at or after ``sent``
        it was outside any read section.
        """
        cur = cpu.current
        if cur is None:
            qs_at: int | None = cpu.local_ns
        elif cur.rcu_read_nesting:
            rdp = self._rdp[cpu.id]
            qs_at = rdp.qs_ns if rdp.qs_ns > sent else None
        elif cur.in_atomic():
            qs_at = None
        else:
            qs_at = self._rdp[cpu.id].qs_ns
        return None if qs_at is None else max(qs_at, sent)

    async def rcu_exp_wait_wake(self, task: Task) -> None:
        """``rcu_exp_wait_wake``: wait out the holdouts, end the GP, wake its waiters."""
        await self.holdouts.wait(task, "rcu_exp_wait")
        await task.sync()
        seq = self._seq
        waiters = seq.end()
        now = task.now_ns
        if self._kernel.tracer.tp.rcu_exp_grace_period:
            self._kernel.trace(task, "rcu_exp_grace_period",
                               f"{self._rcu.name} {signed_seq(seq.current)} end")
        for w in waiters:
            w(now)

    def rcu_report_exp_rdp(self, rdp: RcuData, t: int) -> None:
        """``rcu_report_exp_rdp``: this CPU no longer holds up the expedited GP."""
        rdp.exp_qs_pending = False
        self.holdouts.report_cpu(rdp.cpu.id, t)
