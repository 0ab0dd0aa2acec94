"""Deliberately broken builds for the torture tests: a torture test that never fails proves
nothing, so these show it catches a real RCU bug. They live with the tests, not in the package.

* :class:`BrokenKernel`: tree RCU whose grace periods forget one holdout that is inside a
  read-side critical section when the GP starts, so the GP ends one reader early (sim mode,
  ``run_torture(..., kernel_cls=BrokenKernel)``; the hypothesis state machine boots it too).
* :class:`BrokenAppTorture`: app mode's writers free their ``synchronize_rcu`` retirements
  without waiting for the grace period (``run_app_torture(..., torture_cls=BrokenAppTorture)``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.rcu.tree import RcuState
from rcukit.scenarios.torture.app import AppTorture, _Obj
from rcukit.scenarios.torture.sim import _boot
from rcukit.sched.sim import Task


class BrokenRcuState(RcuState):
    """Tree RCU whose grace periods end one reader early."""

    def _gp_init(self, task: Task) -> None:
        super()._gp_init(task)
        cpus = self.kernel.sim.cpus
        for cpu_id in sorted(self._gp_cpus):
            cur = cpus[cpu_id].current
            if cur is not None and cur.rcu_read_nesting:
                self._gp_cpus.discard(cpu_id)
                self._rdp[cpu_id].qs_pending = False
                return
        for t in self._gp_tasks:
            del self._gp_tasks[t]
            return


class BrokenKernel(Kernel):
    """The stock subsystems, with :class:`BrokenRcuState` for RCU."""

    def _init_subsystems(self) -> None:
        from rcukit.mm.page_alloc import PageAllocator
        from rcukit.rcu.kvfree import KvfreeRcu

        self.mm = PageAllocator(self)
        self.rcu = BrokenRcuState(self)
        self.kvfree = KvfreeRcu(self)
        self._subsystems.extend([self.mm, self.rcu, self.kvfree])


def boot_broken(cfg: KernelConfig) -> AbstractAsyncContextManager[Kernel]:
    """:func:`rcukit.boot` for :class:`BrokenKernel`."""
    return _boot(cfg, BrokenKernel)


class BrokenAppTorture(AppTorture):
    """Writers that free a ``synchronize_rcu`` retirement without the grace period."""

    async def retire_sync(self, old: _Obj) -> None:
        self.free_now(old)
