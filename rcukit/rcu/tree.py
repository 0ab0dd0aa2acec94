"""Tree RCU on the simulated CPUs: the GP kthread, quiescent states, callbacks, hotplug, stalls.

kernel.md §6 is the model. :class:`RcuState` is ``rcu_state`` plus one :class:`RcuData`
(``rcu_data``) per CPU; the clock-free sequence and waiter bookkeeping is
:class:`rcukit.rcu.gpcore.GpCore`, which the application domain reuses on Trio's real clock.

How a grace period runs here (event-driven: nothing ever polls):

* Someone needs a GP (``call_rcu`` accelerated callbacks, ``synchronize_rcu`` parked a waiter, a
  poll was started) and raises ``gp_seq_needed``; the GP kthread (``rcu_preempt``, or
  ``rcu_sched`` without ``CONFIG_PREEMPT_RCU``, on the last CPU) wakes, does ``rcu_gp_init``
  and snapshots the *holdouts*: the online CPUs that are not idle (a set kept by the idle hooks,
  so a GP on a mostly idle 1024-CPU machine never looks at the idle ones, like the kernel's
  dynticks snapshot) plus the tasks preempted inside a read section (``rnp->blkd_tasks``).
* Each quiescent state removes one holdout: a context switch (``rcu_note_context_switch``), idle
  entry (an extended QS), a voluntary schedule point outside a read section (``rcu_all_qs``)
  and, with preemptible RCU, a tick outside a read section in preemptible context
  (``rcu_flavor_sched_clock_irq``). A preempted reader holds the GP it was found in until it
  leaves its outermost read section (``rcu_read_unlock_special``).
* The last report wakes the kthread, which ends the GP (``rcu_gp_cleanup``), wakes the
  ``synchronize_rcu`` waiters whose snapshot is now done and kicks the ``rcuc/N`` kthreads of the
  CPUs whose callbacks waited for it; those advance their segmented list and invoke the ready
  callbacks in ``blimit`` batches.
* An expedited GP is driven by its caller (``rcu_exp_sel_wait_wake``): it "IPIs" every non-idle
  CPU. A CPU whose clock has run past the IPI is quiescent at the first instant after it that
  it was outside any read section (each CPU remembers when it last entered or left one), so
  the expedited GP costs ``expedited_ipi_ns`` per CPU instead of a tick per CPU; a CPU caught
  inside a reader reports when that reader leaves.

Local virtual time (see :mod:`rcukit.sched.sim`): most RCU events happen where the scheduler is
not synced (a context switch, ``rcu_read_unlock``, ``call_rcu`` under a raw lock). Two fences
keep them honest without forcing a hand-off on each one:

* *end fence*: a QS reported at a CPU's local time ``t`` means the GP may not end before ``t``;
  the kthread (and the expedited driver) wait until the latest report time, then sync, then end.
* *start fence*: a snapshot (``get_state``, ``call_rcu``'s acceleration) taken at ``t`` counts on a
  GP that starts at ``t`` or later; the time is recorded against the snapshot value. The kthread
  announces that it is about to start, waits until the latest time recorded for the GP it
  starts, syncs and starts. Snapshots taken while a start is announced count on the GP after
  it (and fence that one), so the wait cannot be moved by later snapshots.

Idle entry is reported from a zero-delay timer on the idle CPU, which fires synced; so the set
of non-idle CPUs a GP start reads never contains news from the future.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import os
import sys
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, cast

import attrs

from rcukit.errors import CpuHotplugError, RcuUsageError
from rcukit.locking.splat import HeldLockInfo, Splat
from rcukit.rcu.gpcore import GpCore, signed_seq
from rcukit.rcu.gpseq import (
    RCU_GET_STATE_COMPLETED,
    RcuGpOldState,
    rcu_seq_done,
    rcu_seq_end,
    rcu_seq_snap,
    rcu_seq_start,
    ulong_cmp_ge,
)
from rcukit.rcu.segcblist import RCU_NEXT_TAIL, BatchLimits, RcuHead, SegCbList
from rcukit.sched.sim import Cpu, Simulator, Task, Timer, WaitQueue
from rcukit.wq import Work, WorkFn, Workqueue

if TYPE_CHECKING:
    from rcukit.kernel import Kernel

__all__ = [
    "HotplugCallback",
    "RcuCallback",
    "RcuData",
    "RcuReadGuard",
    "RcuState",
    "RcuStats",
    "RcuWork",
]

#: A ``call_rcu`` callback: invoked by the CPU's ``rcuc`` kthread with that task and the head
#: (``container_of`` is an ``isinstance`` narrowing of the head). It runs with softirqs
#: disabled, as ``rcu_do_batch`` does, so it may charge time and take spinlocks but not sleep.
RcuCallback = Callable[[Task, RcuHead], object]
#: ``fn(task, cpu_id, online)``, called after a CPU went down (False) or came up (True).
HotplugCallback = Callable[[Task, int, bool], object]
# What GpCore hands back when a target is reached: called with the waker's time.
_Waiter = Callable[[int], object]

_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_INTERNAL_FILES = (
    os.path.join(_PKG_DIR, "sched") + os.sep,
    os.path.join(_PKG_DIR, "locking") + os.sep,
    os.path.join(_PKG_DIR, "kernel.py"),
    os.path.abspath(__file__),
    os.path.dirname(os.path.abspath(contextlib.__file__)) + os.sep + "contextlib",
)
_FAKE_ADDR_BASE = 0xFFFF888004000000


def _caller_site() -> str:
    """The innermost frame outside the scheduler, locking and RCU plumbing: the user's line."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not fn.startswith(_INTERNAL_FILES):
            return f"{os.path.basename(fn)}:{f.f_lineno}"
        f = f.f_back  # type: ignore[assignment]
    return "?"


def _func_name(f: object) -> str:
    if isinstance(f, functools.partial):
        return _func_name(f.func)
    name = getattr(f, "__qualname__", None)
    return name if isinstance(name, str) else type(f).__name__


@attrs.define(eq=False, slots=True)
class RcuData:
    """``struct rcu_data``: one CPU's callbacks and its part in the current grace periods."""

    cpu: Cpu
    idle_timer: Timer
    cblist: SegCbList = attrs.field(factory=SegCbList)
    blimit: BatchLimits = attrs.field(factory=BatchLimits)
    #: This CPU owes the current normal GP a quiescent state (its ``rnp->qsmask`` bit).
    qs_pending: bool = False
    #: This CPU owes the current expedited GP a quiescent state (``rnp->expmask``).
    exp_qs_pending: bool = False
    #: ``cpu.ticks`` when the current GP started (the stall report's "ticks this GP").
    ticks_at_gp_start: int = 0
    #: ``rdp->dynticks``-like counter: even while the CPU is idle (RCU not watching).
    dynticks: int = 2
    #: Latest local time the CPU was known outside any read section (reader entry or exit,
    #: context switch): lets an expedited GP's IPI find a QS the CPU passed after the IPI was
    #: sent even when the CPU's clock has run ahead of the sender's.
    qs_ns: int = 0
    #: gp_seq targets this CPU's callbacks are registered to wait for.
    wait_targets: set[int] = attrs.field(factory=set)
    #: The lazily created ``rcuc/N`` kthread that invokes this CPU's callbacks.
    rcuc: Task | None = None
    rcuc_wq: WaitQueue = attrs.field(factory=lambda: WaitQueue("rcu_cpu_kthread"))
    invoked: int = 0


@attrs.frozen
class RcuStats:
    """A snapshot of the engine's counters (``rcu.statistics()``)."""

    #: ``rcu_state.gp_seq`` (wrapped, as the kernel keeps it).
    gp_seq: int
    started_gps: int
    completed_gps: int
    expedited_gps: int
    callbacks_queued: int
    callbacks_invoked: int
    callbacks_pending: int
    stalls: int
    barriers: int
    qs_reports: int
    #: Tasks currently preempted or blocked inside a read section.
    blocked_readers: int
    cpus_online: int


class RcuWork(Work):
    """``struct rcu_work``: a work item queued only after a grace period (``queue_rcu_work``).

    It is ``pending`` from ``queue_rcu_work`` until it runs, grace period included, as the
    kernel's ``WORK_STRUCT_PENDING`` bit is. No ``__slots__``: users hang their own state on it.
    """

    def __init__(self, name: str, func: WorkFn) -> None:
        super().__init__(name, func)
        self.rcu_head = _RcuWorkHead(self)
        #: Waiting for its grace period (between ``queue_rcu_work`` and the RCU callback).
        self.rcu_pending = False
        #: The workqueue ``queue_rcu_work`` will queue it on.
        self.rcu_wq: Workqueue | None = None

    @property
    def pending(self) -> bool:
        return self.queued or self.rcu_pending


class _RcuWorkHead(RcuHead):
    __slots__ = ("rwork",)

    def __init__(self, rwork: RcuWork) -> None:
        super().__init__(None)
        self.rwork = rwork


class RcuReadGuard:
    """``with rcu.read_lock(task):`` — a read-side critical section; nestable."""

    __slots__ = ("_rcu", "_task")

    def __init__(self, rcu: RcuState, task: Task) -> None:
        self._rcu = rcu
        self._task = task

    def __enter__(self) -> Task:
        self._rcu.rcu_read_lock(self._task)
        return self._task

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._rcu.rcu_read_unlock(self._task)


class _Barrier:
    """One ``rcu_barrier()``: ``barrier_cpu_count`` and its completion."""

    __slots__ = ("count", "last_ns", "wq")

    def __init__(self) -> None:
        self.count = 1
        self.last_ns = 0
        self.wq = WaitQueue("rcu_barrier")

    def callback(self, task: Task, head: RcuHead) -> None:
        self.count -= 1
        if task.now_ns > self.last_ns:
            self.last_ns = task.now_ns
        if not self.count:
            self.wq.wake_all(task.now_ns)


class RcuState:
    """``rcu_state`` of one simulated kernel (``kernel.rcu``). See the module docstring."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        cfg = kernel.config
        self.preemptible = cfg.rcu_preemptible
        #: The flavour's name as traces and stall reports print it.
        self.name = "rcu_preempt" if self.preemptible else "rcu_sched"
        self.core: GpCore[_Waiter] = GpCore()
        sim = kernel.sim
        self._cost = cfg.cost
        self._stall_ns = cfg.rcu_stall_timeout_ms * 1_000_000
        self._rdp: list[RcuData] = []
        for cpu in sim.cpus:
            rdp = RcuData(cpu, Timer(f"rcu_idle/{cpu.id}", self._idle_timer_fn))
            rdp.dynticks = 2 if cpu.idle else 1
            cpu.data["rcu_data"] = rdp
            self._rdp.append(rdp)
        self._n_online = sum(1 for c in sim.cpus if c.online)
        #: Online CPUs not known to be idle: the only ones a GP waits for.
        self._nonidle: set[int] = {c.id for c in sim.cpus if not c.idle and c.online}
        # Holdouts of the current normal / expedited GP.
        self._gp_cpus: set[int] = set()
        self._gp_tasks: dict[Task, None] = {}
        self._exp_cpus: set[int] = set()
        self._exp_tasks: dict[Task, None] = {}
        # Tasks switched out inside a read section and not yet out of it (rnp->blkd_tasks).
        # A reader leaving after a GP start in its CPU's time, but before it in the order
        # things ran, needs no entry: its CPU was still non-idle at that start, so a holdout
        # whose next QS comes after the unlock.
        self._blocked: dict[Task, None] = {}
        # Start fences: for each snapshot value handed out, the latest local time it was read.
        self._start_fences: dict[int, int] = {}
        self._start_announced = False
        self._end_fence = 0
        self._exp_start_fences: dict[int, int] = {}
        self._exp_start_announced = False
        self._exp_end_fence = 0
        self._exp_driver: Task | None = None
        self._req_wq = WaitQueue("rcu_gp_kthread")
        self._last_request = -1
        self._fqs_wq = WaitQueue("rcu_gp_fqs")
        self._exp_wq = WaitQueue("rcu_exp_wait")
        self._kthread: Task | None = None
        self._gp_start_ns = 0
        self._stall_timer = Timer("rcu_stall", self._stall_timer_fn)
        self._stalled_gp = -1
        self._barrier_seq = 0
        self._barrier_running = False
        self._barrier_wq = WaitQueue("rcu_barrier_mutex")
        self._cpus_with_cbs: set[int] = set()
        self._hotplug_cbs: list[HotplugCallback] = []
        self._migrating = False
        self._rhp: dict[int, int] = {}
        self._rhp_next = 0
        # counters
        self._cbs_queued = 0
        self._cbs_invoked = 0
        self._stalls = 0
        self._barriers = 0
        self._qs_reports = 0
        kernel.add_tick_hook(self._on_tick)
        kernel.add_switch_hook(self._on_switch)
        kernel.add_idle_hooks(self._on_idle_enter, self._on_idle_exit)

    def start(self) -> None:
        """Boot. The GP kthread (``rcu_spawn_gp_kthread``) is created on the first GP request,
        so a kernel that never needs a grace period pays nothing for it."""

    # ================================================================== readers

    def read_lock(self, task: Task) -> RcuReadGuard:
        """``with rcu.read_lock(task):`` — ``rcu_read_lock()`` ... ``rcu_read_unlock()``."""
        return RcuReadGuard(self, task)

    def rcu_read_lock(self, task: Task) -> None:
        """Enter a read-side critical section (nestable).

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
        """Leave a read-side critical section; the outermost one may report deferred QSes."""
        n = task.rcu_read_nesting
        if n <= 0:
            raise self._unbalanced(task)
        task.rcu_read_nesting = n - 1
        if not self.preemptible:
            task.preempt_count -= 1
        if n == 1:
            if task.rcu_blocked_reader:
                self._unlock_special(task)
            rdp = self._rdp[task.cpu.id]
            rdp.qs_ns = task.cpu.local_ns
            if rdp.exp_qs_pending and not task.in_atomic():
                self._exp_cpu_qs(rdp, task.cpu.local_ns)

    @staticmethod
    def rcu_read_lock_held(task: Task) -> bool:
        """``rcu_read_lock_held()``."""
        return task.rcu_read_nesting > 0

    def _unbalanced(self, task: Task) -> RcuUsageError:
        holders = [t for t in self.kernel.sim.tasks if t.rcu_read_nesting > 0]
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

    def _unlock_special(self, task: Task) -> None:
        """``rcu_read_unlock_special``: a reader that was preempted leaves; release its GPs."""
        task.rcu_blocked_reader = False
        t = task.cpu.local_ns
        del self._blocked[task]
        if self.kernel.tracer.on:
            self._emit(task.cpu.id, task.comm, task.pid, t, "rcu_unlock_preempted_task",
                       f"{self.name} gp_seq={signed_seq(self.core.gp_seq)} pid={task.pid}")
        if task in self._gp_tasks:
            del self._gp_tasks[task]
            if t > self._end_fence:
                self._end_fence = t
            if not self._gp_tasks and not self._gp_cpus:
                self._fqs_wq.wake_one(t)
        if task in self._exp_tasks:
            del self._exp_tasks[task]
            if t > self._exp_end_fence:
                self._exp_end_fence = t
            if not self._exp_tasks and not self._exp_cpus:
                self._exp_wq.wake_one(t)

    def _may_block(self, task: Task, what: str) -> None:
        if task.rcu_read_nesting:
            raise RcuUsageError(
                f"{what}() called by {task.comm}/{task.pid} inside an RCU read-side critical "
                f"section (nesting {task.rcu_read_nesting}): it would wait for its own reader "
                "forever; call it after rcu_read_unlock()"
            )
        self.kernel.locks.might_sleep(task, what)

    # ================================================================== scheduler hooks

    def _on_tick(self, task: Task, voluntary: bool) -> None:
        rdp = self._rdp[task.cpu.id]
        if (
            (rdp.qs_pending or rdp.exp_qs_pending)
            and not task.rcu_read_nesting
            and not task.in_atomic()
        ):
            if rdp.qs_pending and (voluntary or self.preemptible):
                self._cpu_qs(rdp, task.comm, task.pid)
            if rdp.exp_qs_pending:
                self._exp_cpu_qs(rdp, task.cpu.local_ns)
        cbl = rdp.cblist
        if cbl.n_cbs and cbl.segment_lengths()[RCU_NEXT_TAIL]:
            self._accelerate(rdp, task.cpu.local_ns)  # rcu_core()

    def _on_switch(self, prev: Task) -> None:
        self._note_switch(prev, self._rdp[prev.cpu.id])

    def _note_switch(self, prev: Task, rdp: RcuData) -> None:
        """``rcu_note_context_switch``: a QS for the CPU; a reader inside goes on the list."""
        rdp.qs_ns = rdp.cpu.local_ns
        if prev.rcu_read_nesting:
            if not self.preemptible and not self._migrating:
                self._reader_sleep_splat(prev)
            if not prev.rcu_blocked_reader:
                self._block_reader(prev, rdp)
        if rdp.qs_pending:
            self._cpu_qs(rdp, prev.comm, prev.pid)
        if rdp.exp_qs_pending:
            self._exp_cpu_qs(rdp, rdp.cpu.local_ns)

    def _block_reader(self, task: Task, rdp: RcuData) -> None:
        """``rcu_preempt_ctxt_queue``: the reader blocks the GPs its CPU still owes."""
        task.rcu_blocked_reader = True
        self._blocked[task] = None
        if rdp.qs_pending:
            self._gp_tasks[task] = None
        if rdp.exp_qs_pending:
            self._exp_tasks[task] = None
        if self.kernel.tracer.on:
            self._emit(rdp.cpu.id, task.comm, task.pid, rdp.cpu.local_ns, "rcu_preempt_task",
                       f"{self.name} gp_seq={signed_seq(self.core.gp_seq)} pid={task.pid}")

    def _reader_sleep_splat(self, task: Task) -> None:
        """!PREEMPT_RCU: scheduling inside rcu_read_lock() is ``__might_sleep``'s complaint."""
        locks = self.kernel.locks
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

    def _on_idle_enter(self, cpu: Cpu) -> None:
        rdp = self._rdp[cpu.id]
        rdp.dynticks += 1
        if cpu.online:
            # Reported when the timer fires: then the CPU is the earliest, i.e. synced.
            self.kernel.sim.arm_timer(rdp.idle_timer, cpu, cpu.local_ns)

    def _on_idle_exit(self, cpu: Cpu) -> None:
        rdp = self._rdp[cpu.id]
        rdp.dynticks += 1
        Simulator.cancel_timer(rdp.idle_timer)
        self._nonidle.add(cpu.id)

    def _idle_timer_fn(self, timer: Timer) -> None:
        """``rcu_eqs_enter`` seen by the GP machinery: the CPU is in an extended QS."""
        cpu = timer.cpu
        assert cpu is not None
        if not cpu.online:
            return
        rdp = self._rdp[cpu.id]
        cbl = rdp.cblist
        if cbl.n_cbs and cbl.segment_lengths()[RCU_NEXT_TAIL]:
            self._accelerate(rdp, cpu.local_ns)  # rcu_prepare_for_idle()
        if cpu.current is not None or not cpu.idle:
            return
        self._nonidle.discard(cpu.id)
        if rdp.qs_pending:
            self._cpu_qs(rdp, f"swapper/{cpu.id}", 0)
        if rdp.exp_qs_pending:
            self._exp_cpu_qs(rdp, cpu.local_ns)

    # ================================================================== QS reports

    def _cpu_qs(self, rdp: RcuData, comm: str, pid: int) -> None:
        """``rcu_report_qs_rdp``: this CPU no longer holds up the current normal GP."""
        rdp.qs_pending = False
        cpu = rdp.cpu
        cpu.local_ns += self._cost.qs_report_ns
        t = cpu.local_ns
        if t > self._end_fence:
            self._end_fence = t
        self._gp_cpus.discard(cpu.id)
        self._qs_reports += 1
        if self.kernel.tracer.on:
            self._emit(cpu.id, comm, pid, t, "rcu_grace_period",
                       f"{self.name} {signed_seq(self.core.gp_seq)} cpuqs")
        if not self._gp_cpus and not self._gp_tasks:
            self._fqs_wq.wake_one(t)

    def _exp_cpu_qs(self, rdp: RcuData, t: int) -> None:
        """``rcu_report_exp_rdp``: this CPU no longer holds up the expedited GP."""
        rdp.exp_qs_pending = False
        if t > self._exp_end_fence:
            self._exp_end_fence = t
        self._exp_cpus.discard(rdp.cpu.id)
        if not self._exp_cpus and not self._exp_tasks:
            self._exp_wq.wake_one(t)

    # ================================================================== GP kthread

    @staticmethod
    async def _wait_until(task: Task, t: int) -> None:
        if task.now_ns < t:
            await task.sleep_ns(t - task.now_ns)

    def _snap(self, t: int) -> int:
        """``rcu_seq_snap(&gp_seq)`` as read at local time ``t`` (see "start fence").

        The GP that ends at the returned value must not start before ``t``; that is recorded
        against the value, and :meth:`_start_fence_for` hands it to the kthread.
        """
        s = self.core.snap(assume_started=self._start_announced)
        fences = self._start_fences
        if fences.get(s, -1) < t:
            fences[s] = t
        return s

    def _exp_snap(self, t: int) -> int:
        s = self.core.exp_snap(assume_started=self._exp_start_announced)
        fences = self._exp_start_fences
        if fences.get(s, -1) < t:
            fences[s] = t
        return s

    @staticmethod
    def _start_fence_for(fences: dict[int, int], end: int) -> int:
        """The latest snapshot time among those a GP ending at ``end`` satisfies (consumed)."""
        f = 0
        for target in [x for x in fences if ulong_cmp_ge(end, x)]:
            f = max(f, fences.pop(target))
        return f

    def _request_gp(self, target: int, t: int) -> None:
        """``rcu_start_this_gp``: ask for a GP ending at ``target``; wake the kthread if idle."""
        if target == self._last_request:
            return  # already asked for: the kthread knows
        self._last_request = target
        if self.core.request_gp(target):
            if self._kthread is None:
                sim = self.kernel.sim
                self._kthread = sim.spawn(self._gp_kthread, len(sim.cpus) - 1, self.name, at_ns=t)
            elif self._req_wq.waiters:
                self._req_wq.wake_one(t)

    async def _gp_kthread(self, task: Task) -> None:
        """``rcu_gp_kthread``: one GP at a time, only while one is needed."""
        core = self.core
        cost = self._cost
        while True:
            while not core.gp_needed():
                await task.block(self._req_wq, "rcu_gp_kthread")
            self._start_announced = True
            fence = self._start_fence_for(self._start_fences, core.snap())
            await self._wait_until(task, fence)
            task.charge(cost.gp_init_ns)
            await task.sync()
            self._start_announced = False
            self._gp_init(task)
            while self._gp_cpus or self._gp_tasks:
                await task.block(self._fqs_wq, "rcu_gp_fqs")
            await self._wait_until(task, self._end_fence)
            task.charge(cost.gp_init_ns)
            await task.sync()
            self._gp_cleanup(task)

    def _gp_init(self, task: Task) -> None:
        """``rcu_gp_init``: start the GP and snapshot who must pass a QS for it."""
        now = task.now_ns
        core = self.core
        gp = core.start_gp()
        self._gp_start_ns = now
        self._end_fence = now
        me = task.cpu.id  # the kthread's own CPU is quiescent right now
        cpus = self.kernel.sim.cpus
        for cpu_id in self._nonidle:
            if cpu_id == me:
                continue
            rdp = self._rdp[cpu_id]
            rdp.qs_pending = True
            rdp.ticks_at_gp_start = cpus[cpu_id].ticks
            self._gp_cpus.add(cpu_id)
        self._gp_tasks.update(self._blocked)
        if self.kernel.tracer.on:
            g = signed_seq(gp)
            self._emit(me, task.comm, task.pid, now, "rcu_grace_period", f"{self.name} {g} start")
            for cpu_id in sorted(self._gp_cpus):
                self._emit(cpu_id, task.comm, task.pid, now, "rcu_grace_period",
                           f"{self.name} {g} cpustart")
        self.kernel.sim.arm_timer(self._stall_timer, task.cpu, now + self._stall_ns)

    def _gp_cleanup(self, task: Task) -> None:
        """``rcu_gp_cleanup``: end the GP, wake its waiters and the CPUs whose callbacks waited."""
        now = task.now_ns
        core = self.core
        waiters = core.end_gp()
        Simulator.cancel_timer(self._stall_timer)
        tracer = self.kernel.tracer
        if tracer.on:
            g = signed_seq(core.gp_seq)
            self._emit(task.cpu.id, task.comm, task.pid, now, "rcu_grace_period",
                       f"{self.name} {g} end")
            tracer.emit("rcu_gp", self._gp_start_ns, task.cpu.id, task.comm, task.pid,
                        f"{self.name} g={g}", ph="X", dur_ns=now - self._gp_start_ns,
                        track="rcu_gp")
        for w in waiters:
            w(now)

    # ================================================================== stalls

    def _stall_timer_fn(self, timer: Timer) -> None:
        """``check_cpu_stall``: one report per GP that outlives ``rcu_stall_timeout_ms``."""
        core = self.core
        if not core.gp_in_progress() or self._stalled_gp == core.gp_seq:
            return
        if not self._gp_cpus and not self._gp_tasks:
            return
        cpu = timer.cpu
        assert cpu is not None
        self._stalled_gp = core.gp_seq
        self._stalls += 1
        k = self._kthread
        locks = self.kernel.locks
        locks.record(
            Splat(
                kind="rcu_stall",
                cpu=cpu.id,
                comm=k.comm if k else self.name,
                pid=k.pid if k else 0,
                time_ns=cpu.local_ns,
                release=locks.kernel_release,
                ip="rcu_gp_kthread",
                site=f"g={signed_seq(core.gp_seq)}",
                detail=self.stall_text(cpu),
            )
        )

    def stall_text(self, detector: Cpu) -> str:
        """The kernel's stall report for the current GP, as seen from ``detector``."""
        sim = self.kernel.sim
        lines = [f"INFO: {self.name} detected stalls on CPUs/tasks:"]
        for cpu_id in sorted(self._gp_cpus):
            cpu = sim.cpus[cpu_id]
            rdp = self._rdp[cpu_id]
            ticks = cpu.ticks - rdp.ticks_at_gp_start
            busy = 1 if cpu_id in self._nonidle else 0
            lines.append(
                f"\t{cpu_id}-...{'!' if ticks == 0 else '.'}: ({ticks} ticks this GP) "
                f"idle={rdp.dynticks & 0xFFFF:04x}/{busy}/{busy << 62:#x} "
                f"softirq={cpu.ticks}/{rdp.ticks_at_gp_start} fqs=0"
            )
        for t in self._gp_tasks:
            lines.append(f"\tP{t.pid} {t.comm}")
        jiffies = (detector.local_ns - self._gp_start_ns) // self.kernel.config.tick_ns
        pending = self._cbs_queued - self._cbs_invoked
        lines.append(
            f"\t(detected by {detector.id}, t={jiffies} jiffies, "
            f"g={signed_seq(self.core.gp_seq)}, q={pending})"
        )
        return "\n".join(lines)

    # ================================================================== callbacks

    def call_rcu(self, task: Task, head: RcuHead, func: RcuCallback) -> None:
        """``call_rcu(head, func)``: ``func(task, head)`` runs after a full grace period.

        The head is queued on the calling CPU's segmented list (the callback is stored in
        ``head.func``); charges ``call_rcu_ns``. As in ``__call_rcu_core``, it is given a grace
        period at once only when none is running; otherwise the CPU's next tick, idle entry or
        ``rcuc`` pass accelerates it (``rcu_core``).
        """
        if not callable(func):
            raise RcuUsageError(
                f"call_rcu() got func={func!r}: the callback must be callable as func(task, head)"
            )
        head.func = cast("Callable[[RcuHead], object]", func)
        cpu = task.cpu
        cpu.local_ns += self._cost.call_rcu_ns
        rdp = self._rdp[cpu.id]
        rdp.cblist.enqueue(head)
        self._cbs_queued += 1
        self._cpus_with_cbs.add(cpu.id)
        if self.kernel.tracer.on:
            self._emit(cpu.id, task.comm, task.pid, cpu.local_ns, "rcu_callback",
                       f"{self.name} rhp={self._rhp_addr(head):#x} func={_func_name(func)} "
                       f"{rdp.cblist.n_cbs}")
        if not self.core.gp_in_progress():
            self._accelerate(rdp, cpu.local_ns)

    def _accelerate(self, rdp: RcuData, t: int) -> None:
        """``rcu_accelerate_cbs``: give unassigned callbacks a GP and make sure it is coming."""
        snap = self._snap(t)
        if rdp.cblist.accelerate(snap):
            if snap not in rdp.wait_targets:
                rdp.wait_targets.add(snap)
                self.core.add_waiter(snap, functools.partial(self._cpu_gp_done, rdp, snap))
            self._request_gp(snap, t)

    def _cpu_gp_done(self, rdp: RcuData, target: int, now: int) -> None:
        rdp.wait_targets.discard(target)
        if rdp.cpu.online:
            self._kick_rcuc(rdp, now)

    def _kick_rcuc(self, rdp: RcuData, t: int) -> None:
        """``invoke_rcu_core``: wake (or create) this CPU's ``rcuc`` kthread."""
        if rdp.rcuc is None:
            cpu_id = rdp.cpu.id
            rdp.rcuc = self.kernel.sim.spawn(
                functools.partial(self._rcuc_main, rdp), cpu_id, f"rcuc/{cpu_id}", at_ns=t
            )
        else:
            rdp.rcuc_wq.wake_one(t)

    async def _rcuc_main(self, rdp: RcuData, task: Task) -> None:
        """``rcu_cpu_kthread``: advance this CPU's list and invoke what is ready."""
        while rdp.rcuc is task:
            await self._do_batches(rdp, task)
            if rdp.rcuc is not task:
                return
            if not rdp.cblist.ready_cbs():
                await task.block(rdp.rcuc_wq, "rcu_cpu_kthread")

    async def _do_batches(self, rdp: RcuData, task: Task) -> None:
        """``rcu_do_batch`` repeated: at most ``blimit`` per pass, ``cond_resched`` between."""
        cbl = rdp.cblist
        core = self.core
        tracer = self.kernel.tracer
        invoke_ns = self._cost.rcu_invoke_ns
        bh_preempt = not self.kernel.config.preempt_rt
        cbl.advance(core.gp_seq)
        if cbl.segment_lengths()[RCU_NEXT_TAIL]:
            self._accelerate(rdp, task.now_ns)
        while cbl.ready_cbs():
            limit = rdp.blimit.limit_for(cbl.n_cbs)
            batch = cbl.extract_done(limit)
            if tracer.on:
                bl = "unlimited" if rdp.blimit.unlimited else str(limit)
                self.kernel.trace(task, "rcu_batch_start",
                                  f"{self.name} CBs={len(batch) + cbl.n_cbs} bl={bl}")
            # rcu_do_batch runs with bottom halves off (a preempt count on !RT).
            task.in_softirq += 1
            if bh_preempt:
                task.preempt_count += 1
            try:
                for head in batch:
                    task.charge(invoke_ns)
                    func = cast("RcuCallback | None", head.func)
                    if tracer.on:
                        self.kernel.trace(
                            task, "rcu_invoke_callback",
                            f"{self.name} rhp={self._rhp_addr(head, drop=True):#x} "
                            f"func={_func_name(func)}",
                        )
                    if func is None:
                        raise RcuUsageError(
                            f"RCU callback head {head!r} has no function: queue heads with "
                            "call_rcu(task, head, func)"
                        )
                    res = func(task, head)
                    if res is not None and inspect.isawaitable(res):
                        await res
            finally:
                if bh_preempt:
                    task.preempt_count -= 1
                task.in_softirq -= 1
            n = len(batch)
            self._cbs_invoked += n
            rdp.invoked += n
            if tracer.on:
                self.kernel.trace(task, "rcu_batch_end", f"{self.name} CBs-invoked={n}")
            await task.cond_resched()
            if rdp.rcuc is not task:
                return
            cbl.advance(core.gp_seq)
        if not cbl.n_cbs:
            self._cpus_with_cbs.discard(rdp.cpu.id)

    # ================================================================== synchronous waits

    async def synchronize_rcu(self, task: Task) -> None:
        """Wait for a full normal grace period; concurrent callers share one."""
        self._may_block(task, "synchronize_rcu")
        await task.sync()
        s = self._snap(task.now_ns)
        wq = WaitQueue("synchronize_rcu")
        self.core.add_waiter(s, wq.wake_all)
        self._request_gp(s, task.now_ns)
        while not self.core.done(s):
            await task.block(wq, "synchronize_rcu")

    async def synchronize_rcu_expedited(self, task: Task) -> None:
        """Wait for an expedited GP: IPI the busy CPUs instead of waiting for their ticks.

        Charges ``expedited_ipi_ns`` per CPU targeted. Tracked by ``expedited_sequence``;
        concurrent callers share expedited GPs.
        """
        self._may_block(task, "synchronize_rcu_expedited")
        await task.sync()
        core = self.core
        s = self._exp_snap(task.now_ns)
        while not core.exp_done(s):
            if self._exp_driver is None:
                await self._exp_drive(task, s)
            else:
                wq = WaitQueue("synchronize_rcu_expedited")
                if core.add_exp_waiter(s, wq.wake_all):
                    await task.block(wq, "rcu_exp_wait")

    async def _exp_drive(self, task: Task, s: int) -> None:
        """``rcu_exp_sel_wait_wake``: run expedited GPs until every waiter is served."""
        core = self.core
        sim = self.kernel.sim
        self._exp_driver = task
        try:
            while not core.exp_done(s) or core.n_exp_waiters():
                self._exp_start_announced = True
                fence = self._start_fence_for(self._exp_start_fences, core.exp_snap())
                await self._wait_until(task, fence)
                await task.sync()
                self._exp_start_announced = False
                now = task.now_ns
                seq = core.start_exp()
                self._exp_end_fence = now
                if self.kernel.tracer.on:
                    self.kernel.trace(task, "rcu_exp_grace_period",
                                      f"{self.name} {signed_seq(seq)} start")
                ipi_ns = self._cost.expedited_ipi_ns
                me = task.cpu
                for cpu_id in sorted(self._nonidle):
                    cpu = sim.cpus[cpu_id]
                    if cpu is me:
                        continue  # a CPU going down is still asked: its clock may be ahead
                    task.charge(ipi_ns)
                    sent = task.now_ns
                    cur = cpu.current
                    # rcu_exp_handler. The CPU's clock may be past ``sent``: its QS is the first
                    # instant at or after ``sent`` it was outside any read section.
                    if cur is None:
                        qs_at: int | None = cpu.local_ns
                    elif cur.rcu_read_nesting:
                        rdp = self._rdp[cpu_id]
                        qs_at = rdp.qs_ns if rdp.qs_ns > sent else None
                    elif cur.in_atomic():
                        qs_at = None
                    else:
                        qs_at = self._rdp[cpu_id].qs_ns
                    if qs_at is not None:
                        qs_at = max(qs_at, sent)
                        if qs_at > self._exp_end_fence:
                            self._exp_end_fence = qs_at
                    else:
                        self._rdp[cpu_id].exp_qs_pending = True
                        self._exp_cpus.add(cpu_id)
                        cpu.need_resched = True
                self._exp_tasks.update(self._blocked)
                while self._exp_cpus or self._exp_tasks:
                    await task.block(self._exp_wq, "rcu_exp_wait")
                await self._wait_until(task, self._exp_end_fence)
                await task.sync()
                waiters = core.end_exp()
                now = task.now_ns
                if self.kernel.tracer.on:
                    self.kernel.trace(task, "rcu_exp_grace_period",
                                      f"{self.name} {signed_seq(core.exp_seq)} end")
                for w in waiters:
                    w(now)
        finally:
            self._exp_driver = None
            self._exp_start_announced = False

    # ================================================================== polled API

    def _caller_ns(self, task: Task | None) -> int:
        if task is not None:
            return task.now_ns
        sim = self.kernel.sim
        running = sim.running
        return running.now_ns if running is not None else sim.now_ns

    def get_state_synchronize_rcu(self, task: Task | None = None) -> int:
        """A cookie for :meth:`poll_state_synchronize_rcu`; starts no GP.

        ``task`` is the caller (default: whichever task holds the baton), whose local time
        stamps the snapshot so no GP can start in the caller's past.
        """
        return self._snap(self._caller_ns(task))

    def start_poll_synchronize_rcu(self, task: Task) -> int:
        """Like :meth:`get_state_synchronize_rcu`, and make sure the needed GP will run."""
        t = task.now_ns
        s = self._snap(t)
        self._request_gp(s, t)
        return s

    def poll_state_synchronize_rcu(self, cookie: int) -> bool:
        """Has a full GP elapsed since ``cookie`` was taken? Never blocks, wrap-safe."""
        return self.core.poll(cookie)

    async def cond_synchronize_rcu(self, task: Task, cookie: int) -> None:
        """``synchronize_rcu()`` only if the GP ``cookie`` needs has not already ended."""
        self._may_block(task, "cond_synchronize_rcu")
        await task.sync()
        if not self.core.poll(cookie):
            await self.synchronize_rcu(task)

    @staticmethod
    def get_completed_synchronize_rcu() -> int:
        """A cookie that every poll reports as done (``RCU_GET_STATE_COMPLETED``)."""
        return RCU_GET_STATE_COMPLETED

    def get_state_synchronize_rcu_full(self, task: Task | None = None) -> RcuGpOldState:
        """``rcu_gp_oldstate`` snapshot: satisfied by a normal *or* an expedited GP."""
        t = self._caller_ns(task)
        return RcuGpOldState(self._snap(t), self._exp_snap(t))

    def start_poll_synchronize_rcu_full(self, task: Task) -> RcuGpOldState:
        old = self.get_state_synchronize_rcu_full(task)
        self._request_gp(old.rgos_norm, task.now_ns)
        return old

    def poll_state_synchronize_rcu_full(self, old: RcuGpOldState) -> bool:
        return self.core.poll_full(old)

    async def cond_synchronize_rcu_full(self, task: Task, old: RcuGpOldState) -> None:
        self._may_block(task, "cond_synchronize_rcu_full")
        await task.sync()
        if not self.core.poll_full(old):
            await self.synchronize_rcu(task)

    @staticmethod
    def get_completed_synchronize_rcu_full() -> RcuGpOldState:
        return RcuGpOldState.completed()

    @property
    def gp_seq(self) -> int:
        """``rcu_state.gp_seq`` (wrapped; starts 300 GPs below the wrap as the kernel's does)."""
        return self.core.gp_seq

    @property
    def expedited_sequence(self) -> int:
        return self.core.exp_seq

    # ================================================================== rcu_barrier

    async def rcu_barrier(self, task: Task) -> None:
        """Wait until every callback queued before the call has been invoked.

        Entrains a barrier callback behind each CPU's queued ones and waits for them all; with
        nothing queued anywhere it returns without waiting for a grace period. Concurrent
        callers share the work through ``barrier_sequence``.
        """
        self._may_block(task, "rcu_barrier")
        await task.sync()
        s = rcu_seq_snap(self._barrier_seq)
        while True:
            if rcu_seq_done(self._barrier_seq, s):
                return
            if not self._barrier_running:
                break
            await task.block(self._barrier_wq, "rcu_barrier")
        self._barrier_running = True
        self._barrier_seq = rcu_seq_start(self._barrier_seq)
        now = task.now_ns
        tracer = self.kernel.tracer
        if tracer.on:
            self.kernel.trace(task, "rcu_barrier", f"{self.name} Begin cpu -1 remaining 0 # 0")
        bar = _Barrier()
        bar.last_ns = now
        for cpu_id in sorted(self._cpus_with_cbs):
            rdp = self._rdp[cpu_id]
            head = RcuHead(cast("Callable[[RcuHead], object]", bar.callback))
            if rdp.cblist.entrain(head):
                bar.count += 1
                self._cbs_queued += 1
                if rdp.cblist.segment_lengths()[RCU_NEXT_TAIL]:
                    self._accelerate(rdp, now)
                if rdp.cblist.ready_cbs():
                    self._kick_rcuc(rdp, now)
        bar.count -= 1
        while bar.count:
            await task.block(bar.wq, "rcu_barrier")
        await self._wait_until(task, bar.last_ns)
        await task.sync()
        self._barrier_seq = rcu_seq_end(self._barrier_seq)
        self._barrier_running = False
        self._barriers += 1
        if tracer.on:
            self.kernel.trace(task, "rcu_barrier", f"{self.name} End cpu -1 remaining 0 # 0")
        self._barrier_wq.wake_all(task.now_ns)

    # ================================================================== rcu_work

    def queue_rcu_work(self, task: Task, wq: Workqueue, rwork: RcuWork) -> bool:
        """Queue ``rwork`` on ``wq`` after a grace period; False if it is already pending.

        The work is queued on the CPU that invokes the RCU callback (the queueing CPU, unless
        that CPU went offline meanwhile), as ``rcu_work_rcufn`` does.
        """
        if rwork.pending:
            return False
        rwork.rcu_pending = True
        rwork.rcu_wq = wq
        self.call_rcu(task, rwork.rcu_head, self._rcu_work_rcufn)
        return True

    @staticmethod
    def _rcu_work_rcufn(task: Task, head: RcuHead) -> None:
        assert isinstance(head, _RcuWorkHead)
        rwork = head.rwork
        rwork.rcu_pending = False
        wq = rwork.rcu_wq
        assert wq is not None
        wq.queue_work(task, rwork, cpu=task.cpu.id)

    async def flush_rcu_work(self, task: Task, rwork: RcuWork) -> bool:
        """Wait for ``rwork``'s grace period and run; False if it was idle (kernel semantics)."""
        self._may_block(task, "flush_rcu_work")
        if rwork.rcu_pending:
            await self.rcu_barrier(task)
            wq = rwork.rcu_wq
            assert wq is not None
            await wq.flush_work(task, rwork)
            return True
        wq = rwork.rcu_wq or rwork.wq
        if wq is None:
            return False
        return await wq.flush_work(task, rwork)

    # ================================================================== CPU hotplug

    def add_hotplug_callback(self, fn: HotplugCallback) -> None:
        """Call ``fn(task, cpu_id, online)`` after each CPU down (False) or up (True)."""
        self._hotplug_cbs.append(fn)

    def _hotplug_cpu(self, cpu_id: int, what: str) -> Cpu:
        cpus = self.kernel.sim.cpus
        if isinstance(cpu_id, bool) or not isinstance(cpu_id, int) or not (
            0 <= cpu_id < len(cpus)
        ):
            raise CpuHotplugError(
                f"{what}({cpu_id!r}): no such CPU; allowed: 0 .. {len(cpus) - 1}"
            )
        return cpus[cpu_id]

    async def cpu_down(self, task: Task, cpu_id: int) -> None:
        """Take ``cpu_id`` offline from ``task`` (on another CPU).

        Its tasks move to the caller's CPU (a reader caught inside its section becomes a
        blocked reader), it stops holding up grace periods (``rcu_report_dead``), and its
        callbacks move to the caller's CPU and are re-accelerated against the current
        ``gp_seq`` (``rcutree_migrate_callbacks``), so none runs early and none is lost.
        """
        cpu = self._hotplug_cpu(cpu_id, "cpu_down")
        self._may_block(task, "cpu_down")
        await task.sync()
        if not cpu.online:
            raise CpuHotplugError(f"cpu_down({cpu_id}): CPU {cpu_id} is already offline")
        if self._n_online <= 1:
            raise CpuHotplugError(
                f"cpu_down({cpu_id}): CPU {cpu_id} is the last online CPU; "
                "at least one CPU must stay online"
            )
        if task.cpu is cpu:
            raise CpuHotplugError(
                f"cpu_down({cpu_id}) called from {task.comm}/{task.pid}, which runs on CPU "
                f"{cpu_id}; call it from a task on another CPU"
            )
        sim = self.kernel.sim
        sim.freeze_cpu(cpu)
        self._n_online -= 1
        # The frozen CPU's tasks must not resume in their own past on the new CPU.
        await self._wait_until(task, cpu.local_ns)
        await task.sync()
        target = task.cpu
        now = task.now_ns
        rdp = self._rdp[cpu_id]
        preempted = cpu.current
        self._migrating = True
        try:
            sim.migrate_tasks(cpu, target)
            if preempted is not None:
                self._note_switch(preempted, rdp)
        finally:
            self._migrating = False
        # rcu_report_dead(): an offline CPU holds up no grace period.
        Simulator.cancel_timer(rdp.idle_timer)
        self._nonidle.discard(cpu_id)
        if rdp.qs_pending:
            self._cpu_qs(rdp, f"cpuhp/{cpu_id}", 0)
        if rdp.exp_qs_pending:
            self._exp_cpu_qs(rdp, cpu.local_ns)
        if rdp.dynticks & 1:
            rdp.dynticks += 1
        # rcutree_migrate_callbacks(): adopt, then re-accelerate so nothing runs early.
        mine = self._rdp[target.id]
        if rdp.cblist.n_cbs:
            mine.cblist.advance(self.core.gp_seq)
            mine.cblist.merge_from(rdp.cblist)
            self._cpus_with_cbs.add(target.id)
            self._accelerate(mine, now)
            if mine.cblist.ready_cbs():
                self._kick_rcuc(mine, now)
        self._cpus_with_cbs.discard(cpu_id)
        rdp.wait_targets.clear()
        if rdp.rcuc is not None:
            rdp.rcuc = None  # rcuc/N exits; a new one is created if the CPU comes back
            rdp.rcuc_wq.wake_all(now)
        if self.kernel.tracer.on:
            self.kernel.trace(task, "rcu_grace_period",
                              f"{self.name} {signed_seq(self.core.gp_seq)} cpuofl")
        await self._run_hotplug_cbs(task, cpu_id, False)

    async def cpu_up(self, task: Task, cpu_id: int) -> None:
        """Bring ``cpu_id`` back online (idle, with an empty callback list)."""
        cpu = self._hotplug_cpu(cpu_id, "cpu_up")
        self._may_block(task, "cpu_up")
        await task.sync()
        if cpu.online:
            raise CpuHotplugError(f"cpu_up({cpu_id}): CPU {cpu_id} is already online")
        self.kernel.sim.online_cpu(cpu, task.now_ns)
        self._n_online += 1
        rdp = self._rdp[cpu_id]
        rdp.qs_pending = False
        rdp.exp_qs_pending = False
        rdp.blimit = BatchLimits()
        if self.kernel.tracer.on:
            self.kernel.trace(task, "rcu_grace_period",
                              f"{self.name} {signed_seq(self.core.gp_seq)} cpuonl")
        await self._run_hotplug_cbs(task, cpu_id, True)

    async def _run_hotplug_cbs(self, task: Task, cpu_id: int, online: bool) -> None:
        for fn in list(self._hotplug_cbs):
            res = fn(task, cpu_id, online)
            if inspect.isawaitable(res):
                await res

    # ================================================================== introspection

    def statistics(self) -> RcuStats:
        core = self.core
        return RcuStats(
            gp_seq=core.gp_seq,
            started_gps=core.gps_started,
            completed_gps=core.gps_completed,
            expedited_gps=core.exp_completed,
            callbacks_queued=self._cbs_queued,
            callbacks_invoked=self._cbs_invoked,
            callbacks_pending=self._cbs_queued - self._cbs_invoked,
            stalls=self._stalls,
            barriers=self._barriers,
            qs_reports=self._qs_reports,
            blocked_readers=len(self._blocked),
            cpus_online=self._n_online,
        )

    def rcu_data(self, cpu_id: int) -> RcuData:
        """The ``rcu_data`` of ``cpu_id`` (its callback list, QS state, rcuc kthread)."""
        return self._rdp[cpu_id]

    # ================================================================== tracing helpers

    def _emit(self, cpu: int, comm: str, pid: int, ts: int, name: str, fields: str) -> None:
        self.kernel.tracer.emit(name, ts, cpu, comm, pid, fields)

    def _rhp_addr(self, head: RcuHead, *, drop: bool = False) -> int:
        """A stable kernel-looking address for ``head`` so traces are the same on every run."""
        key = id(head)
        addr = self._rhp.pop(key, None) if drop else self._rhp.get(key)
        if addr is None:
            self._rhp_next += 1
            addr = _FAKE_ADDR_BASE + self._rhp_next * 0x40
            if not drop:
                self._rhp[key] = addr
        return addr
