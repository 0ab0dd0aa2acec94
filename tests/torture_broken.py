"""Deliberately broken builds for the torture tests: a torture test that never fails proves
nothing, so these show it catches a real RCU bug. They live with the tests, not in the package.

* :data:`BROKEN_RCU`: tree RCU whose grace periods forget one holdout that is inside a
  read-side critical section when the GP starts, so the GP ends one reader early (sim mode,
  ``run_torture(..., subsystems=BROKEN_RCU)``; the hypothesis state machine boots it too).
* :class:`BrokenAppTorture`: app mode's writers free their ``synchronize_rcu`` retirements
  without waiting for the grace period (``run_app_torture(..., torture_cls=BrokenAppTorture)``).
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, Subsystems, boot
from rcukit.rcu.tree import RcuState
from rcukit.scenarios.torture.app import AppTorture, _Obj
from rcukit.sched.sim import Task


class BrokenRcuState(RcuState):
    """Tree RCU whose grace periods end one reader early."""

    def rcu_gp_init(self, task: Task) -> None:
        super().rcu_gp_init(task)
        # Forget the idle CPUs too (no wait for the first FQS scan), so the GP ends while the
        # forgotten reader is still inside its section.
        self._fqs_idle_pending = False
        cpus = self.kernel.sim.cpus
        for cpu_id in sorted(self._holdouts.cpus):
            cur = cpus[cpu_id].current
            if cur is not None and cur.rcu_read_nesting:
                self._holdouts.cpus.discard(cpu_id)
                self._rdp[cpu_id].qs_pending = False
                return
        for t in self._holdouts.tasks:
            del self._holdouts.tasks[t]
            return


#: The stock subsystems, with :class:`BrokenRcuState` for RCU.
BROKEN_RCU = Subsystems(rcu=BrokenRcuState)


def boot_broken(cfg: KernelConfig) -> AbstractAsyncContextManager[Kernel]:
    """:func:`rcukit.sim.boot` with :data:`BROKEN_RCU`."""
    return boot(cfg, subsystems=BROKEN_RCU)


class BrokenAppTorture(AppTorture):
    """Writers that free a ``synchronize_rcu`` retirement without the grace period."""

    async def retire_sync(self, old: _Obj) -> None:
        self.free_now(old)
