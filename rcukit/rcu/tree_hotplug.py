"""CPU hotplug as RCU sees it: the ``rcutree_*`` hotplug functions of ``kernel/rcu/tree.c``.

Kept apart from :mod:`rcukit.rcu.tree` only to keep that file small. :class:`RcuHotplug` holds the
number of online CPUs and the callbacks users register (how ``kvfree_rcu`` drains a dead CPU's
``krcp``, as ``kfree_rcu_cpu``'s hotplug state does). Taking a CPU down moves its tasks,
reports it quiescent for good (``rcu_report_dead``) and hands its callbacks to the caller's CPU
(``rcutree_migrate_callbacks``, in :class:`~rcukit.rcu.tree.RcuCallbacks`).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING

from rcukit.errors import CpuHotplugError
from rcukit.rcu.gpcore import signed_seq
from rcukit.rcu.segcblist import BatchLimits
from rcukit.rcu.tree_fence import wait_until
from rcukit.rcu.tree_part import RcuStatePart
from rcukit.sched.sim import Simulator, Task

if TYPE_CHECKING:
    from rcukit.rcu.tree import RcuData, RcuState
    from rcukit.sched.sim import Cpu

__all__ = ["HotplugCallback", "RcuHotplug"]

#: ``fn(task, cpu_id, online)``, called after a CPU went down (False) or came up (True).
HotplugCallback = Callable[[Task, int, bool], object]


class RcuHotplug(RcuStatePart):
    """``cpu_down``/``cpu_up`` of one simulated kernel, as RCU takes part in them."""

    def __init__(self, rcu: RcuState) -> None:
        super().__init__(rcu)
        self.n_online = sum(1 for c in rcu.kernel.sim.cpus if c.online)
        self._callbacks: list[HotplugCallback] = []

    def add_hotplug_callback(self, fn: HotplugCallback) -> None:
        """Call ``fn(task, cpu_id, online)`` after each CPU down (False) or up (True)."""
        self._callbacks.append(fn)

    def _cpu_arg(self, cpu_id: int, what: str) -> Cpu:
        cpus = self._kernel.sim.cpus
        if isinstance(cpu_id, bool) or not isinstance(cpu_id, int) or not (
            0 <= cpu_id < len(cpus)
        ):
            raise CpuHotplugError(
                f"{what}({cpu_id!r}): no such CPU; allowed: 0 .. {len(cpus) - 1}"
            )
        return cpus[cpu_id]

    def _check_down(self, task: Task, cpu: Cpu) -> None:
        cpu_id = cpu.id
        if not cpu.online:
            raise CpuHotplugError(f"cpu_down({cpu_id}): CPU {cpu_id} is already offline")
        if self.n_online <= 1:
            raise CpuHotplugError(
                f"cpu_down({cpu_id}): CPU {cpu_id} is the last online CPU; "
                "at least one CPU must stay online"
            )
        if task.cpu is cpu:
            raise CpuHotplugError(
                f"cpu_down({cpu_id}) called from {task.comm}/{task.pid}, which runs on CPU "
                f"{cpu_id}; call it from a task on another CPU"
            )

    async def cpu_down(self, task: Task, cpu_id: int) -> None:
        """Take ``cpu_id`` offline from ``task`` (on another CPU).

        Its tasks move to the caller's CPU (a reader caught inside its section becomes a
        blocked reader), it stops holding up grace periods (``rcu_report_dead``), and its
        callbacks move to the caller's CPU and are re-accelerated against the current
        ``gp_seq`` (``rcutree_migrate_callbacks``), so none runs early and none is lost.
        """
        cpu = self._cpu_arg(cpu_id, "cpu_down")
        rcu = self._rcu
        rcu._may_block(task, "cpu_down")
        await task.sync()
        self._check_down(task, cpu)
        sim = self._kernel.sim
        sim.freeze_cpu(cpu)
        self.n_online -= 1
        # The frozen CPU's tasks must not resume in their own past on the new CPU.
        await wait_until(task, cpu.local_ns)
        await task.sync()
        target = task.cpu
        now = task.now_ns
        rdp = self._rdp[cpu_id]
        preempted = cpu.current
        readers = rcu.readers
        readers.migrating = True
        try:
            sim.migrate_tasks(cpu, target)
            if preempted is not None:
                readers.rcu_note_context_switch(preempted, rdp)
        finally:
            readers.migrating = False
        self.rcu_report_dead(rdp)
        rcu.cbs.rcutree_migrate_callbacks(rdp, self._rdp[target.id], now)
        if rdp.rcuc is not None:
            rdp.rcuc = None  # rcuc/N exits; a new one is created if the CPU comes back
            rdp.rcuc_wq.wake_all(now)
        if self._kernel.tracer.tp.rcu_grace_period:
            self._kernel.trace(task, "rcu_grace_period",
                               f"{rcu.name} {signed_seq(rcu.core.gp_seq.current)} cpuofl")
        await self._run_callbacks(task, cpu_id, False)

    def rcu_report_dead(self, rdp: RcuData) -> None:
        """``rcu_report_dead``: an offline CPU holds up no grace period."""
        rcu = self._rcu
        cpu = rdp.cpu
        Simulator.cancel_timer(rdp.idle_timer)
        rcu._nonidle.discard(cpu.id)
        if rdp.qs_pending:
            rcu.rcu_report_qs_rdp(rdp, f"cpuhp/{cpu.id}", 0)
        if rdp.exp_qs_pending:
            rcu.exp.rcu_report_exp_rdp(rdp, cpu.local_ns)
        if rdp.dynticks & 1:
            rdp.dynticks += 1

    async def cpu_up(self, task: Task, cpu_id: int) -> None:
        """Bring ``cpu_id`` back online (idle, with an empty callback list)."""
        cpu = self._cpu_arg(cpu_id, "cpu_up")
        rcu = self._rcu
        rcu._may_block(task, "cpu_up")
        await task.sync()
        if cpu.online:
            raise CpuHotplugError(f"cpu_up({cpu_id}): CPU {cpu_id} is already online")
        self._kernel.sim.online_cpu(cpu, task.now_ns)
        self.n_online += 1
        # rcutree_prepare_cpu(): a fresh start for the CPU's rcu_data.
        rdp = self._rdp[cpu_id]
        rdp.qs_pending = False
        rdp.exp_qs_pending = False
        rdp.blimit = BatchLimits()
        if self._kernel.tracer.tp.rcu_grace_period:
            self._kernel.trace(task, "rcu_grace_period",
                               f"{rcu.name} {signed_seq(rcu.core.gp_seq.current)} cpuonl")
        await self._run_callbacks(task, cpu_id, True)

    async def _run_callbacks(self, task: Task, cpu_id: int, online: bool) -> None:
        for fn in list(self._callbacks):
            res = fn(task, cpu_id, online)
            if inspect.isawaitable(res):
                await res
