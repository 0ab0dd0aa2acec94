"""The read side of Tree RCU: ``kernel/rcu/tree_plugin.h`` on the simulated CPUs.

:class:`RcuReaders` is what ``tree_plugin.h`` keeps for one ``rcu_state``: the read-side
nesting (``__rcu_read_lock``/``__rcu_read_unlock``), the list of readers preempted or blocked
inside a section (``rnp->blkd_tasks``) and the context-switch hook
(``rcu_note_context_switch``). With ``CONFIG_PREEMPT_RCU`` a reader may be switched out; it
then blocks the GPs its CPU still owed until its outermost unlock
(``rcu_read_unlock_special``). Without it, ``rcu_read_lock()`` disables preemption and a
switch inside a section is a splat.

The GP holdouts a blocked reader adds itself to belong to :class:`~rcukit.rcu.tree.RcuState`
(``rnp->gp_tasks``) and :class:`~rcukit.rcu.tree_exp.RcuExp` (``rnp->exp_tasks``); as the
kernel's ``#include``d files share ``rcu_node``, this class reaches them through ``rcu``.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from rcukit.errors import RcuUsageError
from rcukit.locking.checker import python_site
from rcukit.locking.splat import HeldLockInfo, Splat
from rcukit.rcu.gpcore import signed_seq
from rcukit.rcu.tree_part import RcuStatePart
from rcukit.wq import current_frames

if TYPE_CHECKING:
    from rcukit.rcu.tree import RcuData, RcuState
    from rcukit.sched.sim import Task

__all__ = ["RcuReaders"]

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_FILES = (
    os.path.join(_PKG_DIR, "sched") + os.sep,
    os.path.join(_PKG_DIR, "locking") + os.sep,
    os.path.join(_PKG_DIR, "kernel.py"),
    os.path.join(_PKG_DIR, "machine.py"),
    # tree.py and its tree_*.py pieces
    os.path.join(_PKG_DIR, "rcu", "tree"),
    os.path.dirname(os.path.abspath(contextlib.__file__)) + os.sep + "contextlib",
)


def _caller_site() -> str:
    """The innermost frame outside the scheduler, locking and RCU plumbing: the user's line."""
    return python_site(_INTERNAL_FILES)


class RcuReaders(RcuStatePart):
    """Read-side critical sections and blocked readers of one ``rcu_state`` (``kernel.rcu``)."""

    def __init__(self, rcu: RcuState) -> None:
        super().__init__(rcu)
        self.preemptible = rcu.preemptible
        #: Tasks switched out inside a read section and not yet out of it (``rnp->blkd_tasks``).
        #: A reader leaving after a GP start in its CPU's time, but before it in the order
        #: things ran, needs no entry: its CPU was still non-idle at that start, so a holdout
        #: whose next QS comes after the unlock.
        self.blocked: dict[Task, None] = {}
        #: CPU hotplug is moving a dead CPU's tasks: a reader switched out then is no splat.
        self.migrating = False
        #: ``__rcu_read_unlock()``'s ``WARN_ON_ONCE`` has fired (BUGFLAG_DONE).
        self.warned_unbalanced = False

    def rcu_read_lock(self, task: Task) -> None:
        """``__rcu_read_lock``: enter a read-side critical section (nestable).

        Without ``CONFIG_PREEMPT_RCU`` this disables preemption, as ``__rcu_read_lock`` does with
        ``CONFIG_PREEMPT_COUNT``: the task is atomic until the outermost unlock.
        """
        n = task.rcu_read_nesting
        task.rcu_read_nesting = n + 1
        if not self.preemptible:
            task.preempt_count += 1
        if not n:
            self._rdp[task.cpu.id].qs_ns = task.cpu.local_ns

    def rcu_read_unlock(self, task: Task) -> None:
        """``__rcu_read_unlock``: the outermost unlock may report deferred QSes."""
        n = task.rcu_read_nesting
        if n <= 0:
            self.rcu_read_unlock_unbalanced(task)
            return
        task.rcu_read_nesting = n - 1
        if not self.preemptible:
            task.preempt_count -= 1
        if n == 1:
            if task.rcu_blocked_reader:
                self.rcu_read_unlock_special(task)
            rdp = self._rdp[task.cpu.id]
            rdp.qs_ns = task.cpu.local_ns
            if rdp.exp_qs_pending and not task.in_atomic():
                self._rcu.exp.rcu_report_exp_rdp(rdp, task.cpu.local_ns)

    def rcu_read_unlock_unbalanced(self, task: Task) -> None:
        """``rcu_read_unlock()`` by a task not in a read section: a WARNING, and go on.

        With ``CONFIG_PREEMPT_RCU`` ``__rcu_read_unlock()`` (kernel/rcu/tree_plugin.h, v5.9)
        decrements ``current->rcu_read_lock_nesting`` and, under ``CONFIG_PROVE_LOCKING``,
        ``WARN_ON_ONCE(rrln < 0 || rrln > RCU_NEST_PMAX)``: one report per boot. Without it
        the unlock is ``preempt_enable()``, whose ``preempt_count_sub()``
        (kernel/sched/core.c, ``CONFIG_DEBUG_PREEMPT``) refuses the underflow with
        ``DEBUG_LOCKS_WARN_ON(val > preempt_count())``: printed only if lockdep was still on,
        and it turns lockdep off. Either way the task that holds the read lock keeps it (its
        own count is untouched). rcukit leaves the caller's nesting at 0 where PREEMPT_RCU
        leaves it at -1 (which would make the caller's next reader unprotected), and
        lockdep's own "bad unlock balance" report from ``rcu_lock_release()`` is not
        modelled. The message says who holds the lock, if anyone does."""
        kernel = self._kernel
        panic = kernel.panic
        chain, wq = current_frames(task)
        msg = str(self._unbalanced(task))
        if self.preemptible:
            if self.warned_unbalanced:
                panic.counts["warning_once_suppressed"] += 1
                return
            self.warned_unbalanced = True
            panic.warn(task, "__rcu_read_unlock", ["__rcu_read_unlock", *chain],
                       message=msg, workqueue=wq)
            return
        if not kernel.locks.debug_locks_off():
            panic.counts["warning_lockdep_off"] += 1
            return
        panic.warn(
            task, "preempt_count_sub", ["preempt_count_sub", "__rcu_read_unlock", *chain],
            message=f"DEBUG_LOCKS_WARN_ON(val > preempt_count())\n{msg}", workqueue=wq,
        )

    def _unbalanced(self, task: Task) -> RcuUsageError:
        holders = [t for t in self._kernel.sim.tasks if t.rcu_read_nesting > 0]
        if holders:
            h = holders[0]
            return RcuUsageError(
                f"rcu_read_unlock() by {task.comm}/{task.pid}, which is not in an RCU read-side "
                f"critical section; {h.comm}/{h.pid} holds the read lock: rcu_read_unlock() must "
                "be called by the task that called rcu_read_lock()"
            )
        return RcuUsageError(
            f"rcu_read_unlock() by {task.comm}/{task.pid} without a matching rcu_read_lock(): "
            "every unlock must pair with an earlier lock by the same task"
        )

    def rcu_read_unlock_special(self, task: Task) -> None:
        """``rcu_read_unlock_special``: a reader that was preempted leaves; release its GPs."""
        task.rcu_blocked_reader = False
        t = task.cpu.local_ns
        del self.blocked[task]
        rcu = self._rcu
        if self._kernel.tracer.tp.rcu_unlock_preempted_task:
            rcu._emit(task.cpu.id, task.comm, task.pid, t, "rcu_unlock_preempted_task",
                      f"{rcu.name} gp_seq={signed_seq(rcu.core.gp_seq.current)} pid={task.pid}")
        rcu._holdouts.report_task(task, t)  # rcu_report_unblock_qs_rnp
        rcu.exp.holdouts.report_task(task, t)  # rcu_report_exp_rnp

    def on_switch(self, prev: Task) -> None:
        """The scheduler's switch hook: ``__schedule`` calls ``rcu_note_context_switch``."""
        self.rcu_note_context_switch(prev, self._rdp[prev.cpu.id])

    def rcu_note_context_switch(self, prev: Task, rdp: RcuData) -> None:
        """``rcu_note_context_switch``: a QS for the CPU; a reader inside goes on the list."""
        rdp.qs_ns = rdp.cpu.local_ns
        if prev.rcu_read_nesting:
            if not self.preemptible and not self.migrating:
                self.rcu_sleep_check(prev)
            if not prev.rcu_blocked_reader:
                self.rcu_preempt_ctxt_queue(prev, rdp)
        if rdp.qs_pending:
            self._rcu.rcu_report_qs_rdp(rdp, prev.comm, prev.pid)
        if rdp.exp_qs_pending:
            self._rcu.exp.rcu_report_exp_rdp(rdp, rdp.cpu.local_ns)

    def rcu_preempt_ctxt_queue(self, task: Task, rdp: RcuData) -> None:
        """``rcu_preempt_ctxt_queue``: the reader blocks the GPs its CPU still owes."""
        task.rcu_blocked_reader = True
        self.blocked[task] = None
        rcu = self._rcu
        if rdp.qs_pending:
            rcu._holdouts.tasks[task] = None
        if rdp.exp_qs_pending:
            rcu.exp.holdouts.tasks[task] = None
        if self._kernel.tracer.tp.rcu_preempt_task:
            rcu._emit(rdp.cpu.id, task.comm, task.pid, rdp.cpu.local_ns, "rcu_preempt_task",
                      f"{rcu.name} gp_seq={signed_seq(rcu.core.gp_seq.current)} pid={task.pid}")

    def rcu_sleep_check(self, task: Task) -> None:
        """!PREEMPT_RCU: scheduling inside rcu_read_lock() is ``__might_sleep``'s complaint."""
        locks = self._kernel.locks
        prove = locks.prove_raw
        held = tuple(
            HeldLockInfo(
                h.lock.name,
                h.lock.addr,
                h.lock.kind.wait_outer.effective(prove),
                h.lock.kind.wait_inner.effective(prove),
                h.ip,
            )
            for h in task.held_locks
        )
        ctx = locks.task_wait_context(task)
        locks.record(
            Splat(
                kind="sleeping_in_atomic",
                cpu=task.cpu.id,
                comm=task.comm,
                pid=task.pid,
                time_ns=task.cpu.local_ns,
                release=locks.kernel_release,
                ip="rcu_note_context_switch",
                site=_caller_site(),
                context=(ctx, ctx),
                held=held,
                preempt_count=task.preempt_count,
                irqs_disabled=bool(task.irqs_disabled),
                preempt_ip="rcu_read_lock",
                rcu_depth=task.rcu_read_nesting,
            )
        )
