"""RCU CPU stall warnings: ``kernel/rcu/tree_stall.h`` on the simulated CPUs.

:class:`RcuStall` holds what ``tree_stall.h`` keeps for one ``rcu_state``: the stall deadline
(``rcu_state.jiffies_stall``, here a timer armed at each GP start by
``record_gp_stall_check_time``) and how many reports there were. The kernel checks the deadline
from the scheduling-clock tick; a timer fires at the same instant without a tick hook. A report
(in ``print_other_cpu_stall``'s words) moves the deadline ``3 * timeout + 3`` jiffies on, so a
stall that lasts is reported again, as ``check_cpu_stall()`` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rcukit.locking.splat import Splat
from rcukit.rcu.gpcore import signed_seq
from rcukit.rcu.tree_part import RcuStatePart
from rcukit.sched.sim import Simulator, Timer

if TYPE_CHECKING:
    from rcukit.rcu.tree import RcuState
    from rcukit.sched.sim import Cpu

__all__ = ["RcuStall"]


class RcuStall(RcuStatePart):
    """Stall detection for the normal GPs of one ``rcu_state`` (``kernel.rcu.stall``)."""

    def __init__(self, rcu: RcuState) -> None:
        super().__init__(rcu)
        self._timeout_ns = rcu.kernel.config.rcu_stall_timeout_ms * 1_000_000
        self._timer = Timer("rcu_stall", self.check_cpu_stall)
        #: Stall reports so far (``RcuStats.stalls``).
        self.stalls = 0

    def record_gp_stall_check_time(self, cpu: Cpu, now: int) -> None:
        """``record_gp_stall_check_time``: a GP started at ``now``; arm its deadline."""
        self._kernel.sim.arm_timer(self._timer, cpu, now + self._timeout_ns)

    def gp_ended(self) -> None:
        """The GP ended: its deadline no longer applies."""
        Simulator.cancel_timer(self._timer)

    def check_cpu_stall(self, timer: Timer) -> None:
        """``check_cpu_stall``: a report once a GP outlives ``rcu_stall_timeout_ms``, and the
        next deadline ``jiffies + 3 * rcu_jiffies_till_stall_check() + 3`` (kernel/rcu/
        tree_stall.h, v5.9-v6.x): a stall that lasts is reported again."""
        rcu = self._rcu
        core = rcu.core
        if not core.gp_seq.in_progress():
            return
        holdouts = rcu._holdouts
        if not holdouts.cpus and not holdouts.tasks:
            return
        cpu = timer.cpu
        assert cpu is not None
        k = self._kernel
        k.sim.arm_timer(timer, cpu, cpu.local_ns + 3 * self._timeout_ns + 3 * k.config.tick_ns)
        self.stalls += 1
        kthread = rcu._kthread
        locks = k.locks
        locks.record(
            Splat(
                kind="rcu_stall",
                cpu=cpu.id,
                comm=kthread.comm if kthread else rcu.name,
                pid=kthread.pid if kthread else 0,
                time_ns=cpu.local_ns,
                release=locks.kernel_release,
                ip="rcu_gp_kthread",
                site=f"g={signed_seq(core.gp_seq.current)}",
                detail=self.print_other_cpu_stall(cpu),
            )
        )

    def print_other_cpu_stall(self, detector: Cpu) -> str:
        """``print_other_cpu_stall``: the report for the current GP, as seen from ``detector``."""
        rcu = self._rcu
        cpus = self._kernel.sim.cpus
        lines = [f"INFO: {rcu.name} detected stalls on CPUs/tasks:"]
        holdouts = rcu._holdouts
        fqs = rcu.n_force_qs - rcu._n_force_qs_gpstart  # print_cpu_stall_info()
        for cpu_id in sorted(holdouts.cpus):
            cpu = cpus[cpu_id]
            rdp = self._rdp[cpu_id]
            ticks = cpu.ticks - rdp.ticks_at_gp_start
            busy = 1 if cpu_id in rcu._nonidle else 0
            lines.append(
                f"\t{cpu_id}-...{'!' if ticks == 0 else '.'}: ({ticks} ticks this GP) "
                f"idle={rdp.dynticks & 0xFFFF:04x}/{busy}/{busy << 62:#x} "
                f"softirq={cpu.ticks}/{rdp.ticks_at_gp_start} fqs={fqs}"
            )
        for t in holdouts.tasks:
            lines.append(f"\tP{t.pid} {t.comm}")
        jiffies = (detector.local_ns - rcu._gp_start_ns) // self._kernel.config.tick_ns
        lines.append(
            f"\t(detected by {detector.id}, t={jiffies} jiffies, "
            f"g={signed_seq(rcu.core.gp_seq.current)}, q={rcu.cbs.pending})"
        )
        return "\n".join(lines)
