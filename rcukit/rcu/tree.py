"""Tree RCU on the simulated CPUs: ``rcu_state``, the GP kthread, quiescent states, callbacks.

kernel.md §6 is the model. :class:`RcuState` is ``rcu_state`` plus one :class:`RcuData`
(``rcu_data``) per CPU; the clock-free sequence and waiter bookkeeping is
:class:`rcukit.rcu.gpcore.GpCore`, which the application domain reuses on Trio's real clock.
Split where the kernel splits ``kernel/rcu/``; each piece is a small class owning its own
state, as each kernel file owns its statics, composed by :class:`RcuState`:

* here (``tree.c``): the GP kthread and QS reports (:class:`RcuState`), and the callbacks:
  ``call_rcu``, ``rcu_do_batch`` in ``rcuc/N``, ``rcu_barrier``, ``queue_rcu_work``
  (:class:`RcuCallbacks`);
* :mod:`rcukit.rcu.tree_plugin`: read-side sections and blocked readers;
* :mod:`rcukit.rcu.tree_exp`: expedited GPs; :mod:`rcukit.rcu.tree_stall`: stall warnings;
* :mod:`rcukit.rcu.tree_hotplug`: CPU hotplug (``rcutree_*`` of ``tree.c``, kept apart);
* :mod:`rcukit.rcu.tree_fence`: ours, not the kernel's: local virtual time vs GP starts/ends.

The pieces share the ``rcu_data`` and ``rcu_node``-like state kept here (``_rdp``, ``_nonidle``,
``_holdouts``) through the :class:`RcuState` they are given (each is a
:class:`~rcukit.rcu.tree_part.RcuStatePart`), as the ``#include``d files share ``tree.c``'s; the
public API on :class:`RcuState` delegates to them.

How a grace period runs here (event-driven: the kthread sleeps until a report or a timer):

* Someone needs a GP (``call_rcu`` accelerated callbacks, ``synchronize_rcu`` parked a waiter, a
  poll was started) and raises ``gp_seq_needed``; the GP kthread (``rcu_preempt``, or
  ``rcu_sched`` without ``CONFIG_PREEMPT_RCU``, on the last CPU) wakes, does ``rcu_gp_init``
  and snapshots the *holdouts*: the online CPUs that are not idle (a set kept by the idle hooks)
  plus the tasks preempted inside a read section (``rnp->blkd_tasks``). The idle CPUs are in
  the kernel's ``qsmask`` too; here they are one flag, so a GP on a mostly idle 1024-CPU
  machine never walks them one by one.
* Each quiescent state of a busy CPU removes one holdout: a context switch
  (``rcu_note_context_switch``), a voluntary schedule point outside a read section
  (``rcu_all_qs``) and, with preemptible RCU, a tick outside a read section in preemptible
  context (``rcu_flavor_sched_clock_irq``). A preempted reader holds the GP it was found in
  until it leaves its outermost read section (``rcu_read_unlock_special``).
* Idle CPUs report nothing: the kthread's force-quiescent-state scans find them
  (``rcu_gp_fqs_loop``), the first ``jiffies_till_first_fqs`` jiffies after the start (3 at
  HZ=1000: ``RCU_JIFFIES_TILL_FORCE_QS + nr_cpu_ids / 256``), then every
  ``jiffies_till_next_fqs``: ``dyntick_save_progress_counter`` clears the CPUs idle at the
  first scan, ``rcu_implicit_dynticks_qs`` those that went idle since. So a GP with an idle
  CPU lasts until a scan; one whose CPUs are all busy ends at their last report, which wakes
  the kthread (``rcu_report_qs_rsp``).
* ``rcu_gp_cleanup`` ends the GP and wakes the ``synchronize_rcu`` waiters whose snapshot is now
  done; each CPU whose callbacks waited for it notices on its next tick (``rcu_pending`` ->
  ``invoke_rcu_core``) and its ``rcuc/N`` kthread advances the segmented list and invokes the
  ready callbacks in ``blimit`` batches.
* An expedited GP is driven by its caller (:mod:`rcukit.rcu.tree_exp`): IPIs, no FQS wait.

Local virtual time (see :mod:`rcukit.sched.sim`): most RCU events happen where the scheduler is
not synced; the start and end fences of :mod:`rcukit.rcu.tree_fence` keep them honest without
forcing a hand-off on each one. Idle entry becomes visible to the GP side from a zero-delay
timer on the idle CPU, which fires synced; so the set of non-idle CPUs a GP start or an FQS
scan reads never contains news from the future.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from statistics import median_low
from types import TracebackType
from typing import TYPE_CHECKING, cast

import attrs

from rcukit.errors import KernelPanic, RcuUsageError, SimulationError, SplatError
from rcukit.rcu.gpcore import GpCore, signed_seq
from rcukit.rcu.gpseq import (
    RCU_GET_STATE_COMPLETED,
    RcuGpOldState,
    rcu_seq_done,
    rcu_seq_end,
    rcu_seq_snap,
    rcu_seq_start,
)
from rcukit.rcu.segcblist import RCU_NEXT_TAIL, BatchLimits, RcuHead, SegCbList
from rcukit.rcu.tree_exp import RcuExp
from rcukit.rcu.tree_fence import Holdouts, StartFence, wait_until
from rcukit.rcu.tree_hotplug import HotplugCallback, RcuHotplug
from rcukit.rcu.tree_part import RcuStatePart
from rcukit.rcu.tree_plugin import RcuReaders
from rcukit.rcu.tree_stall import RcuStall
from rcukit.sched.sim import Cpu, Simulator, Task, Timer, WaitQueue
from rcukit.wq import Work, WorkFn, Workqueue, current_frames, symbol_of

if TYPE_CHECKING:
    from rcukit.machine import Machine

__all__ = [
    "RCU_JIFFIES_FQS_DIV",
    "HotplugCallback",
    "RcuCallback",
    "RcuCallbacks",
    "RcuData",
    "RcuReadGuard",
    "RcuState",
    "RcuStats",
    "RcuWork",
    "rcu_jiffies_till_force_qs",
]

#: A ``call_rcu`` callback: invoked by the CPU's ``rcuc`` kthread with that task and the head
#: (``container_of`` is an ``isinstance`` narrowing of the head). It runs with softirqs
#: disabled, as ``rcu_do_batch`` does, so it may charge time and take spinlocks but not sleep.
RcuCallback = Callable[[Task, RcuHead], object]
# What GpCore hands back when a target is reached: called with the waker's time.
_Waiter = Callable[[int], object]

_FAKE_ADDR_BASE = 0xFFFF888004000000

#: ``RCU_JIFFIES_FQS_DIV`` (``kernel/rcu/tree.h``): one more jiffy between FQS scans per 256
#: possible CPUs.
RCU_JIFFIES_FQS_DIV = 256


def rcu_jiffies_till_force_qs(hz: int) -> int:
    """``RCU_JIFFIES_TILL_FORCE_QS`` (``kernel/rcu/tree.h``, v5.9 and v6.1):
    ``1 + (HZ > 250) + (HZ > 500)`` jiffies, i.e. 3 at HZ=1000, 2 at HZ=300, 1 at HZ<=250."""
    return 1 + (hz > 250) + (hz > 500)


def _wakeme_after_rcu(wq: WaitQueue, timer: Timer) -> None:
    """``wakeme_after_rcu``: the ``synchronize_rcu`` caller's callback completes its wait."""
    cpu = timer.cpu
    assert cpu is not None
    wq.wake_all(cpu.local_ns)


def rcu_leak_callback(task: Task, head: RcuHead) -> None:
    """``rcu_leak_callback``: what a double-queued head runs instead of its callback."""


def _func_name(f: object) -> str:
    """What ``%ps`` prints for a callback: its symbol, no class or module (the modelled
    callbacks are named after their kernel counterparts, ``wakeme_after_rcu``...)."""
    if isinstance(f, functools.partial):
        return _func_name(f.func)
    name = getattr(f, "__name__", None)
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
    #: The CPU has noticed the current GP (``rdp->gp_seq`` caught up by
    #: ``__note_gp_changes()``, which prints the CPU's ``cpustart``).
    gp_noticed: bool = True
    #: ``rdp->dynticks``-like counter: even while the CPU is idle (RCU not watching).
    dynticks: int = 2
    #: The CPU was seen in an extended QS (idle) since it began to owe the current GP one:
    #: what ``rcu_dynticks_in_eqs_since()`` reads from ``->dynticks`` at the next FQS scan.
    eqs_since_gp: bool = False
    #: Latest local time the CPU was known outside any read section (reader entry or exit,
    #: context switch): lets an expedited GP's IPI find a QS the CPU passed after the IPI was
    #: sent even when the CPU's clock has run ahead of the sender's.
    qs_ns: int = 0
    #: gp_seq targets this CPU's callbacks are registered to wait for.
    wait_targets: set[int] = attrs.field(factory=set)
    #: The lazily created ``rcuc/N`` kthread that invokes this CPU's callbacks.
    rcuc: Task | None = None
    rcuc_wq: WaitQueue = attrs.field(factory=lambda: WaitQueue("rcu_cpu_kthread"))
    #: This CPU's next scheduling-clock tick after a GP its callbacks waited for ended
    #: (``rcu_sched_clock_irq`` -> ``rcu_pending`` -> ``invoke_rcu_core``).
    core_tick: Timer | None = None
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
    #: Normal GPs from ``rcu_gp_init`` to ``rcu_gp_cleanup`` (the kernel's ``gp_start`` to
    #: ``gp_end``, in ns): the median (low median) and the longest, 0 before the first GP ends.
    gp_duration_p50_ns: int = 0
    gp_duration_max_ns: int = 0
    #: ``rcu_state.n_force_qs``: force-quiescent-state scans (``rcu_gp_fqs``) so far.
    fqs_scans: int = 0
    #: ``call_rcu()`` of a head already queued (``CONFIG_DEBUG_OBJECTS_RCU_HEAD``'s
    #: "Double-freed CB"; only counted with ``kvfree.debug_objects``), each one dropped.
    double_call_rcu: int = 0


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

    __slots__ = ("_readers", "_task")

    def __init__(self, rcu: RcuState, task: Task) -> None:
        self._readers = rcu.readers
        self._task = task

    def __enter__(self) -> Task:
        self._readers.rcu_read_lock(self._task)
        return self._task

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._readers.rcu_read_unlock(self._task)


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


class RcuCallbacks(RcuStatePart):
    """The callback side of ``kernel/rcu/tree.c`` for one ``rcu_state`` (``kernel.rcu.cbs``).

    ``call_rcu`` queues on the calling CPU's segmented list; ``rcu_accelerate_cbs`` gives the
    new callbacks a GP and asks for it; when it ends ``invoke_rcu_core`` wakes ``rcuc/N``
    (``rcu_cpu_kthread``), which invokes the ready ones in ``blimit`` batches
    (``rcu_do_batch``). ``rcu_barrier`` entrains a callback behind every CPU's; ``rcu_work``
    (``kernel/workqueue.c``) is a callback that queues a work item.
    """

    def __init__(self, rcu: RcuState) -> None:
        super().__init__(rcu)
        #: ``rcu_state.gp_seq``, which the callbacks wait on.
        self._gp_seq = rcu.core.gp_seq
        self._name = rcu.name
        cfg = rcu.kernel.config
        self._call_ns = cfg.cost.call_rcu_ns
        self._invoke_ns = cfg.cost.rcu_invoke_ns
        self._tick_ns = cfg.tick_ns
        # rcu_do_batch runs with bottom halves off (a preempt count on !RT).
        self._bh_preempt = not cfg.preempt_rt
        #: CPUs with callbacks queued: the ones ``rcu_barrier`` visits.
        self.cpus_with_cbs: set[int] = set()
        self.queued = 0
        self.invoked = 0
        self.barriers = 0
        self._barrier_seq = 0
        self._barrier_running = False
        self._barrier_wq = WaitQueue("rcu_barrier_mutex")
        self._rhp: dict[int, int] = {}
        self._rhp_next = 0
        #: ``CONFIG_DEBUG_OBJECTS_RCU_HEAD`` (``kvfree.debug_objects``): the rcu_heads queued
        #: and not yet invoked (by id), the double queueings found, the lines printed.
        self._queued_heads: set[int] | None = None
        self.double_call_rcu = 0
        self.double_call_rcu_reports: list[str] = []
        # v5.9: WARN_ONCE; v5.12+ (mem_dump_obj() added): pr_err while ++doublefrees < 4.
        self._double_print_max = 1 if cfg.kernel_version < (5, 12) else 3
        if cfg.kvfree.debug_objects:
            self._queued_heads = set()
            # only the debug build pays for the check: call_rcu itself stays as it is
            self.call_rcu = self._call_rcu_debug  # type: ignore[method-assign]

    @property
    def pending(self) -> int:
        """Callbacks queued and not yet invoked (the stall report's ``q=``)."""
        return self.queued - self.invoked

    def call_rcu(self, task: Task, head: RcuHead, func: RcuCallback) -> None:
        """``__call_rcu``: queue on this CPU; accelerate now only if no GP is running."""
        if not callable(func):
            raise RcuUsageError(
                f"call_rcu() got func={func!r}: the callback must be callable as func(task, head)"
            )
        head.func = cast("Callable[[RcuHead], object]", func)
        cpu = task.cpu
        cpu.local_ns += self._call_ns
        rdp = self._rdp[cpu.id]
        rdp.cblist.enqueue(head)
        self.queued += 1
        self.cpus_with_cbs.add(cpu.id)
        if self._kernel.tracer.tp.rcu_callback:
            self._rcu._emit(cpu.id, task.comm, task.pid, cpu.local_ns, "rcu_callback",
                            f"{self._name} rhp={self.rhp_addr(head):#x} func={_func_name(func)} "
                            f"{rdp.cblist.n_cbs}")
        if not self._gp_seq.in_progress():
            self.rcu_accelerate_cbs(rdp, cpu.local_ns)

    call_rcu_plain = call_rcu

    def _call_rcu_debug(self, task: Task, head: RcuHead, func: RcuCallback) -> None:
        """``__call_rcu`` with ``CONFIG_DEBUG_OBJECTS_RCU_HEAD``: ``debug_rcu_head_queue()``
        refuses a head that is queued and not yet invoked. The kernel then prints "Double-freed
        CB", points the queued head at ``rcu_leak_callback`` (so neither callback runs: the
        object leaks rather than being freed twice) and returns without queueing it again."""
        heads = self._queued_heads
        assert heads is not None
        key = id(head)
        if key not in heads:
            self.call_rcu_plain(task, head, func)
            heads.add(key)
            return
        self.double_call_rcu += 1
        if len(self.double_call_rcu_reports) < self._double_print_max:
            msg = (
                f"__call_rcu(): Double-freed CB {self.rhp_addr(head):#x}->"
                f"{_func_name(head.func)}()!!!  ({task.comm}/{task.pid} on cpu {task.cpu.id})"
            )
            self.double_call_rcu_reports.append(msg)
            out = self._kernel.locks.out
            if out is not None:
                print(msg, file=out)
        head.func = cast("Callable[[RcuHead], object]", rcu_leak_callback)

    def rcu_accelerate_cbs(self, rdp: RcuData, t: int) -> None:
        """``rcu_accelerate_cbs``: give unassigned callbacks a GP and make sure it is coming."""
        rcu = self._rcu
        snap = rcu._snap(t)
        if rdp.cblist.accelerate(snap):
            if snap not in rdp.wait_targets:
                rdp.wait_targets.add(snap)
                self._gp_seq.add_waiter(snap, functools.partial(self._gp_done, rdp, snap))
            rcu.rcu_start_this_gp(snap, t)

    def _gp_done(self, rdp: RcuData, target: int, now: int) -> None:
        """A GP ``rdp``'s callbacks waited for ended: the CPU notices on its next tick.

        ``rcu_gp_cleanup`` only advances ``gp_seq`` (and the GP kthread's own CPU's list); every
        CPU learns of the end from its next scheduling-clock interrupt, where
        ``rcu_sched_clock_irq`` -> ``rcu_pending`` sees the GP completed and calls
        ``invoke_rcu_core`` (v5.9 and v6.1 ``kernel/rcu/tree.c``). An idle CPU with callbacks
        keeps its tick (``rcu_needs_cpu``); rcukit's idle CPUs have none, so the tick is a timer
        at the next jiffy boundary, which on a busy CPU fires in that CPU's tick.
        """
        rdp.wait_targets.discard(target)
        cpu = rdp.cpu
        if not cpu.online:
            return
        timer = rdp.core_tick
        if timer is None:
            timer = rdp.core_tick = Timer(f"rcu_pending/{cpu.id}", self.rcu_pending)
        elif timer.pending:
            return
        tick = self._tick_ns
        self._kernel.sim.arm_timer(timer, cpu, (now // tick + 1) * tick)

    def rcu_pending(self, timer: Timer) -> None:
        """``rcu_pending`` at the CPU's tick: a GP its callbacks waited for has ended."""
        cpu = timer.cpu
        assert cpu is not None
        if cpu.online:
            self.invoke_rcu_core(self._rdp[cpu.id], cpu.local_ns)

    def invoke_rcu_core(self, rdp: RcuData, t: int) -> None:
        """``invoke_rcu_core``: wake (or create) this CPU's ``rcuc`` kthread."""
        if rdp.rcuc is None:
            cpu_id = rdp.cpu.id
            rdp.rcuc = self._kernel.sim.spawn(
                functools.partial(self.rcu_cpu_kthread, rdp), cpu_id, f"rcuc/{cpu_id}", at_ns=t
            )
        else:
            rdp.rcuc_wq.wake_one(t)

    async def rcu_cpu_kthread(self, rdp: RcuData, task: Task) -> None:
        """``rcu_cpu_kthread``: advance this CPU's list and invoke what is ready."""
        while rdp.rcuc is task:
            await self.rcu_core(rdp, task)
            if rdp.rcuc is not task:
                return
            if not rdp.cblist.ready_cbs():
                await task.block(rdp.rcuc_wq, "rcu_cpu_kthread")

    async def rcu_core(self, rdp: RcuData, task: Task) -> None:
        """``rcu_core``: advance and accelerate, then ``rcu_do_batch`` until nothing is ready,
        with a ``cond_resched`` between batches."""
        cbl = rdp.cblist
        gp_seq = self._gp_seq
        cbl.advance(gp_seq.current)
        if cbl.segment_lengths()[RCU_NEXT_TAIL]:
            self.rcu_accelerate_cbs(rdp, task.now_ns)
        while cbl.ready_cbs():
            await self.rcu_do_batch(rdp, task)
            if not cbl.ready_cbs():
                # rcu_do_batch() raises RCU_SOFTIRQ again only while ready callbacks remain;
                # a GP that ended meanwhile is noticed at the CPU's next tick
                break
            await task.cond_resched()
            if rdp.rcuc is not task:
                return
            cbl.advance(gp_seq.current)
        if not cbl.n_cbs:
            self.cpus_with_cbs.discard(rdp.cpu.id)

    async def rcu_do_batch(self, rdp: RcuData, task: Task) -> None:
        """``rcu_do_batch``: invoke at most ``blimit`` ready callbacks, bottom halves off."""
        cbl = rdp.cblist
        kernel = self._kernel
        tp = kernel.tracer.tp
        invoke_ns = self._invoke_ns
        bh_preempt = self._bh_preempt
        limit = rdp.blimit.limit_for(cbl.n_cbs)
        batch = cbl.extract_done(limit)
        heads = self._queued_heads
        if heads is not None:  # debug_rcu_head_unqueue() before each is invoked
            for head in batch:
                heads.discard(id(head))
        if tp.rcu_batch_start:
            kernel.trace(task, "rcu_batch_start",
                         f"{self._name} CBs={len(batch) + cbl.n_cbs} bl={limit}")
        task.in_softirq += 1
        if bh_preempt:
            task.preempt_count += 1
        try:
            for head in batch:
                task.charge(invoke_ns)
                func = cast("RcuCallback | None", head.func)
                if tp.rcu_invoke_callback:
                    kernel.trace(task, "rcu_invoke_callback",
                                 f"{self._name} rhp={self.rhp_addr(head, drop=True):#x} "
                                 f"func={_func_name(func)}")
                if func is None:
                    raise RcuUsageError(
                        f"RCU callback head {head!r} has no function: queue heads with "
                        "call_rcu(task, head, func)"
                    )
                try:
                    res = func(task, head)
                    if res is not None and inspect.isawaitable(res):
                        await res
                except (KernelPanic, SplatError, SimulationError):
                    raise
                except Exception as err:
                    self.rcu_callback_failed(task, func, err)
        finally:
            if bh_preempt:
                task.preempt_count -= 1
            task.in_softirq -= 1
        n = len(batch)
        self.invoked += n
        rdp.invoked += n
        if tp.rcu_batch_end:
            kernel.trace(task, "rcu_batch_end", f"{self._name} CBs-invoked={n}")

    def rcu_callback_failed(self, task: Task, func: RcuCallback, err: Exception) -> None:
        """A callback raised: report it as a WARNING in the callback and invoke the next one.

        A kernel callback cannot raise; what lets the kernel go on is the callback's own
        ``if (WARN_ON(...)) return;``: ``report_bug()`` (lib/bug.c) and ``__warn()``
        (kernel/panic.c, v5.9) print the WARNING and add TAINT_WARN, the callback returns and
        ``rcu_do_batch()`` (kernel/rcu/tree.c) invokes the rest of the batch. (An oops there
        would be fatal: callbacks run with bottom halves off, and ``oops_end()`` panics with
        "Fatal exception in interrupt" when ``in_interrupt()``.) With ``panic_on_warn`` the
        WARNING panics the machine."""
        sym = symbol_of(func)
        chain, _ = current_frames(task)
        frames = [sym, "rcu_do_batch", "rcu_core", *chain]
        msg = f"{type(err).__name__}: {err}"
        self._kernel.panic.warn(task, sym, frames, message=msg)

    async def rcu_barrier(self, task: Task) -> None:
        """``rcu_barrier``: entrain a callback behind every CPU's and wait for them all."""
        rcu = self._rcu
        rcu._may_block(task, "rcu_barrier")
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
        kernel = self._kernel
        if kernel.tracer.tp.rcu_barrier:
            kernel.trace(task, "rcu_barrier", f"{self._name} Begin cpu -1 remaining 0 # 0")
        bar = self._rcu_barrier_entrain(now)
        while bar.count:
            await task.block(bar.wq, "rcu_barrier")
        await wait_until(task, bar.last_ns)
        await task.sync()
        self._barrier_seq = rcu_seq_end(self._barrier_seq)
        self._barrier_running = False
        self.barriers += 1
        if kernel.tracer.tp.rcu_barrier:
            kernel.trace(task, "rcu_barrier", f"{self._name} End cpu -1 remaining 0 # 0")
        self._barrier_wq.wake_all(task.now_ns)

    def _rcu_barrier_entrain(self, now: int) -> _Barrier:
        """``rcu_barrier_entrain`` on every CPU with callbacks (``barrier_cpu_count``)."""
        bar = _Barrier()
        bar.last_ns = now
        for cpu_id in sorted(self.cpus_with_cbs):
            rdp = self._rdp[cpu_id]
            head = RcuHead(cast("Callable[[RcuHead], object]", bar.callback))
            if rdp.cblist.entrain(head):
                bar.count += 1
                self.queued += 1
                if rdp.cblist.segment_lengths()[RCU_NEXT_TAIL]:
                    self.rcu_accelerate_cbs(rdp, now)
                if rdp.cblist.ready_cbs():
                    self.invoke_rcu_core(rdp, now)
        bar.count -= 1
        return bar

    def rcutree_migrate_callbacks(self, rdp: RcuData, mine: RcuData, now: int) -> None:
        """``rcutree_migrate_callbacks``: adopt, then re-accelerate so nothing runs early."""
        if rdp.cblist.n_cbs:
            mine.cblist.advance(self._gp_seq.current)
            mine.cblist.merge_from(rdp.cblist)
            self.cpus_with_cbs.add(mine.cpu.id)
            self.rcu_accelerate_cbs(mine, now)
            if mine.cblist.ready_cbs():
                self.invoke_rcu_core(mine, now)
        self.cpus_with_cbs.discard(rdp.cpu.id)
        rdp.wait_targets.clear()

    def queue_rcu_work(self, task: Task, wq: Workqueue, rwork: RcuWork) -> bool:
        """``queue_rcu_work`` (``kernel/workqueue.c``): ``call_rcu`` with ``rcu_work_rcufn``."""
        if rwork.pending:
            return False
        rwork.rcu_pending = True
        rwork.rcu_wq = wq
        self.call_rcu(task, rwork.rcu_head, self.rcu_work_rcufn)
        return True

    @staticmethod
    def rcu_work_rcufn(task: Task, head: RcuHead) -> None:
        """``rcu_work_rcufn``: queue the work on the CPU invoking the callback (the name is the
        kernel's: trace lines print it as the callback's ``%ps``)."""
        assert isinstance(head, _RcuWorkHead)
        rwork = head.rwork
        rwork.rcu_pending = False
        wq = rwork.rcu_wq
        assert wq is not None
        wq.queue_work(task, rwork, cpu=task.cpu.id)

    async def flush_rcu_work(self, task: Task, rwork: RcuWork) -> bool:
        """``flush_rcu_work``: ``rcu_barrier``, then ``flush_work``."""
        self._rcu._may_block(task, "flush_rcu_work")
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

    def rhp_addr(self, head: RcuHead, *, drop: bool = False) -> int:
        """A stable kernel-looking address for ``head`` so traces are the same on every run."""
        key = id(head)
        addr = self._rhp.pop(key, None) if drop else self._rhp.get(key)
        if addr is None:
            self._rhp_next += 1
            addr = _FAKE_ADDR_BASE + self._rhp_next * 0x40
            if not drop:
                self._rhp[key] = addr
        return addr


class RcuState:
    """``rcu_state`` of one simulated kernel (``kernel.rcu``). See the module docstring.

    Owns the normal GP: the GP kthread, its holdouts and the QS reports that clear them. The
    other parts are composed in: :attr:`readers` (``tree_plugin.h``), :attr:`exp`
    (``tree_exp.h``), :attr:`stall` (``tree_stall.h``), :attr:`cbs` (callbacks) and
    :attr:`hotplug`.
    """

    def __init__(self, kernel: Machine) -> None:
        self.kernel = kernel
        cfg = kernel.config
        self.preemptible = cfg.rcu_preemptible
        #: The flavour's name as traces and stall reports print it.
        self.name = "rcu_preempt" if self.preemptible else "rcu_sched"
        self.core: GpCore[_Waiter] = GpCore()
        sim = kernel.sim
        self._qs_report_ns = cfg.cost.qs_report_ns
        self._gp_init_ns = cfg.cost.gp_init_ns
        self._rdp: list[RcuData] = []
        for cpu in sim.cpus:
            rdp = RcuData(cpu, Timer(f"rcu_idle/{cpu.id}", self.rcu_eqs_enter))
            rdp.dynticks = 2 if cpu.idle else 1
            cpu.data["rcu_data"] = rdp
            self._rdp.append(rdp)
        #: Online CPUs not known to be idle: the only ones a GP waits for.
        self._nonidle: set[int] = {c.id for c in sim.cpus if not c.idle and c.online}
        #: ``rnp->qsmask`` and ``rnp->gp_tasks`` of the current normal GP.
        self._holdouts = Holdouts("rcu_gp_fqs")
        self._start = StartFence()
        self._req_wq = WaitQueue("rcu_gp_kthread")
        self._last_request = -1
        self._kthread: Task | None = None
        self._gp_start_ns = 0
        self._qs_reports = 0
        hz = cfg.hz
        # rcu_init_geometry(): RCU_JIFFIES_TILL_FORCE_QS + nr_cpu_ids / RCU_JIFFIES_FQS_DIV.
        d = rcu_jiffies_till_force_qs(hz) + cfg.nr_cpus // RCU_JIFFIES_FQS_DIV
        #: ``jiffies_till_first_fqs``: the first FQS scan of a GP, in jiffies after its start.
        self.jiffies_till_first_fqs = d
        #: ``jiffies_till_next_fqs``: the wait between later FQS scans of the same GP.
        self.jiffies_till_next_fqs = d
        self._tick_ns = cfg.tick_ns
        self._fqs_timer = Timer("rcu_gp_fqs", self._rcu_gp_fqs_timeout)
        #: ``rnp->qsmask`` bits of the CPUs idle at the GP start: the first FQS scan clears
        #: them (held as a flag and the set of non-idle CPUs at the start, so a GP never walks
        #: the idle CPUs of a large machine one by one).
        self._fqs_idle_pending = False
        self._gp_nonidle_at_start: set[int] = set()
        #: ``rcu_state.n_force_qs`` and its value at the current GP's start (stall reports).
        self.n_force_qs = 0
        self._n_force_qs_gpstart = 0
        #: Durations of the normal GPs ended so far, in ns (``gp_end - gp_start``).
        self._gp_durations: list[int] = []
        self.readers = RcuReaders(self)
        self.exp = RcuExp(self)
        self.stall = RcuStall(self)
        self.cbs = RcuCallbacks(self)
        self.hotplug = RcuHotplug(self)
        kernel.add_tick_hook(self.rcu_sched_clock_irq)
        kernel.add_switch_hook(self.readers.on_switch)
        kernel.add_idle_hooks(self.rcu_idle_enter, self.rcu_idle_exit)

    def start(self) -> None:
        """Boot. The GP kthread (``rcu_spawn_gp_kthread``) is created on the first GP request,
        so a kernel that never needs a grace period pays nothing for it."""

    # ================================================================== readers (tree_plugin)

    def read_lock(self, task: Task) -> RcuReadGuard:
        """``with rcu.read_lock(task):`` — ``rcu_read_lock()`` ... ``rcu_read_unlock()``."""
        return RcuReadGuard(self, task)

    def rcu_read_lock(self, task: Task) -> None:
        """Enter a read-side critical section (nestable).

        Without ``CONFIG_PREEMPT_RCU`` this disables preemption, as ``__rcu_read_lock`` does with
        ``CONFIG_PREEMPT_COUNT``: the task is atomic until the outermost unlock.
        """
        self.readers.rcu_read_lock(task)

    def rcu_read_unlock(self, task: Task) -> None:
        """Leave a read-side critical section; the outermost one may report deferred QSes."""
        self.readers.rcu_read_unlock(task)

    @staticmethod
    def rcu_read_lock_held(task: Task) -> bool:
        """``rcu_read_lock_held()``."""
        return task.rcu_read_nesting > 0

    def _may_block(self, task: Task, what: str) -> None:
        if task.rcu_read_nesting:
            raise RcuUsageError(
                f"{what}() called by {task.comm}/{task.pid} inside an RCU read-side critical "
                f"section (nesting {task.rcu_read_nesting}): it would wait for its own reader "
                "forever; call it after rcu_read_unlock()"
            )
        self.kernel.locks.might_sleep(task, what)

    # ================================================================== scheduler hooks

    def rcu_sched_clock_irq(self, task: Task, voluntary: bool) -> None:
        """The tick (and, ``voluntary``, ``rcu_all_qs`` at a schedule point): a QS outside a
        read section (``rcu_flavor_sched_clock_irq``), then ``rcu_core``'s acceleration."""
        rdp = self._rdp[task.cpu.id]
        if not rdp.gp_noticed:
            self.rcu_note_gp_changes(rdp, task.comm, task.pid)
        if (
            (rdp.qs_pending or rdp.exp_qs_pending)
            and not task.rcu_read_nesting
            and not task.in_atomic()
        ):
            if rdp.qs_pending and (voluntary or self.preemptible):
                self.rcu_report_qs_rdp(rdp, task.comm, task.pid)
            if rdp.exp_qs_pending:
                self.exp.rcu_report_exp_rdp(rdp, task.cpu.local_ns)
        cbl = rdp.cblist
        if cbl.n_cbs and cbl.segment_lengths()[RCU_NEXT_TAIL]:
            self.cbs.rcu_accelerate_cbs(rdp, task.cpu.local_ns)

    def rcu_idle_enter(self, cpu: Cpu) -> None:
        """``rcu_idle_enter``: RCU stops watching; the GP side hears of it from a timer."""
        rdp = self._rdp[cpu.id]
        rdp.dynticks += 1
        if cpu.online:
            # Reported when the timer fires: then the CPU is the earliest, i.e. synced.
            self.kernel.sim.arm_timer(rdp.idle_timer, cpu, cpu.local_ns)

    def rcu_idle_exit(self, cpu: Cpu) -> None:
        """``rcu_idle_exit``: RCU watches again; GPs started from now on wait for the CPU."""
        rdp = self._rdp[cpu.id]
        rdp.dynticks += 1
        Simulator.cancel_timer(rdp.idle_timer)
        self._nonidle.add(cpu.id)

    def rcu_eqs_enter(self, timer: Timer) -> None:
        """The idle CPU's ``->dynticks`` is even from now on, as other CPUs read it.

        Entering idle reports nothing to the normal GP: the GP kthread finds the CPU in its
        next FQS scan (``dyntick_save_progress_counter``, ``rcu_implicit_dynticks_qs``). The
        expedited GP's IPI would find it quiescent at once, so that report stays immediate.
        """
        cpu = timer.cpu
        assert cpu is not None
        if not cpu.online:
            return
        rdp = self._rdp[cpu.id]
        cbl = rdp.cblist
        if cbl.n_cbs and cbl.segment_lengths()[RCU_NEXT_TAIL]:
            self.cbs.rcu_accelerate_cbs(rdp, cpu.local_ns)  # rcu_prepare_for_idle()
        if cpu.current is not None or not cpu.idle:
            return
        self._nonidle.discard(cpu.id)
        if rdp.qs_pending:
            rdp.eqs_since_gp = True
        if rdp.exp_qs_pending:
            self.exp.rcu_report_exp_rdp(rdp, cpu.local_ns)

    # ================================================================== QS reports

    def rcu_note_gp_changes(self, rdp: RcuData, comm: str, pid: int) -> None:
        """``note_gp_changes()`` from the CPU's ``rcu_core()``: it sees the GP that started
        since it last looked and prints ``cpustart`` (``__note_gp_changes``); nothing else
        in the model waits on it."""
        rdp.gp_noticed = True
        if self.kernel.tracer.tp.rcu_grace_period:
            self._emit(rdp.cpu.id, comm, pid, rdp.cpu.local_ns, "rcu_grace_period",
                       f"{self.name} {signed_seq(self.core.gp_seq.current)} cpustart")

    def rcu_report_qs_rdp(self, rdp: RcuData, comm: str, pid: int) -> None:
        """``rcu_report_qs_rdp``: this CPU no longer holds up the current normal GP."""
        if not rdp.gp_noticed:
            self.rcu_note_gp_changes(rdp, comm, pid)
        rdp.qs_pending = False
        cpu = rdp.cpu
        cpu.local_ns += self._qs_report_ns
        t = cpu.local_ns
        self._qs_reports += 1
        tp = self.kernel.tracer.tp
        if tp.rcu_grace_period:
            self._emit(cpu.id, comm, pid, t, "rcu_grace_period",
                       f"{self.name} {signed_seq(self.core.gp_seq.current)} cpuqs")
        if tp.rcu_qs:
            self._trace_qs(cpu.id, comm, pid, t, "cpuqs")
        self._holdouts.report_cpu(cpu.id, t)

    def _trace_qs(self, cpu_id: int, comm: str, pid: int, t: int, how: str) -> None:
        """The ``rcu_qs`` slice of CPU ``cpu_id``: from the GP's start to the QS reported for
        it at ``t`` (by the CPU itself, ``cpuqs``, or by force_qs_rnp() for an idle CPU,
        ``dti``), on track ``rcu_qs/CPU N``; what the CPU's ``rcu_data.cpu_no_qs`` covers."""
        g = signed_seq(self.core.gp_seq.current)
        self.kernel.tracer.emit(
            "rcu_qs", self._gp_start_ns, cpu_id, comm, pid, f"{self.name} g={g} {how}",
            ph="X", dur_ns=t - self._gp_start_ns, track=f"rcu_qs/CPU {cpu_id}",
        )

    # ================================================================== GP kthread

    def _snap(self, t: int) -> int:
        """``rcu_seq_snap(&gp_seq)`` as read at local time ``t`` (recorded as a start fence)."""
        return self._start.record(self.core.gp_seq.snap(assume_started=self._start.announced), t)

    def rcu_start_this_gp(self, target: int, t: int) -> None:
        """``rcu_start_this_gp``: ask for a GP ending at ``target``; wake the kthread if idle."""
        if target == self._last_request:
            return  # already asked for: the kthread knows
        self._last_request = target
        if self.core.request_gp(target):
            if self._kthread is None:
                sim = self.kernel.sim
                self._kthread = sim.spawn(
                    self.rcu_gp_kthread, len(sim.cpus) - 1, self.name, at_ns=t
                )
            elif self._req_wq.waiters:
                self._req_wq.wake_one(t)

    async def rcu_gp_kthread(self, task: Task) -> None:
        """``rcu_gp_kthread``: one GP at a time, only while one is needed."""
        core = self.core
        start = self._start
        while True:
            while not core.gp_needed():
                await task.block(self._req_wq, "rcu_gp_kthread")
            start.announced = True
            await wait_until(task, start.consume(core.gp_seq.snap()))
            task.charge(self._gp_init_ns)
            await task.sync()
            start.announced = False
            self.rcu_gp_init(task)
            await self.rcu_gp_fqs_loop(task)
            task.charge(self._gp_init_ns)
            await task.sync()
            self.rcu_gp_cleanup(task)

    def _gp_waiting(self) -> bool:
        """``rnp->qsmask`` or ``rcu_preempt_blocked_readers_cgp()``: the GP cannot end yet."""
        h = self._holdouts
        return bool(h.cpus or h.tasks or self._fqs_idle_pending)

    def _rcu_gp_fqs_timeout(self, timer: Timer) -> None:
        """The GP kthread's ``swait_event_idle_timeout_exclusive`` ran out: FQS time."""
        cpu = timer.cpu
        assert cpu is not None
        self._holdouts.wq.wake_one(cpu.local_ns)

    async def rcu_gp_fqs_loop(self, task: Task) -> None:
        """``rcu_gp_fqs_loop``: wait for the last QS report or the FQS time, scan, repeat.

        ``jiffies_force_qs = jiffies + j`` with ``j = jiffies_till_first_fqs`` and then
        ``jiffies_till_next_fqs``: the wait ends at a jiffy boundary. The last QS report wakes
        the kthread early (``rcu_report_qs_rsp``), so a GP whose CPUs are all busy ends at their
        reports, and one with an idle CPU lasts until an FQS scan finds it.
        """
        holdouts = self._holdouts
        tick = self._tick_ns
        timer = self._fqs_timer
        sim = self.kernel.sim
        first = True
        j = self.jiffies_till_first_fqs
        while self._gp_waiting():
            force_at = (task.now_ns // tick + j) * tick
            sim.arm_timer(timer, task.cpu, force_at)
            while self._gp_waiting() and task.now_ns < force_at:
                await task.block(holdouts.wq, "rcu_gp_fqs")
            Simulator.cancel_timer(timer)
            if not self._gp_waiting():
                break
            await task.sync()
            self.rcu_gp_fqs(task, first)
            first = False
            j = self.jiffies_till_next_fqs
        await wait_until(task, holdouts.end_fence)

    def rcu_gp_fqs(self, task: Task, first_time: bool) -> None:
        """``rcu_gp_fqs`` -> ``force_qs_rnp``: report the CPUs found in an extended QS.

        The first scan (``dyntick_save_progress_counter``) clears every CPU idle now; a CPU that
        was idle at the GP start but runs now must pass a QS like the others. Later scans
        (``rcu_implicit_dynticks_qs``) also clear a CPU that went through idle since.
        """
        self.n_force_qs += 1
        holdouts = self._holdouts
        nonidle = self._nonidle
        me = task.cpu.id
        if first_time and self._fqs_idle_pending:
            self._fqs_idle_pending = False
            n_idle = self.hotplug.n_online - 1 - len(self._gp_nonidle_at_start)
            cpus = self.kernel.sim.cpus
            woke = sorted(nonidle - self._gp_nonidle_at_start - {me})
            for cpu_id in woke:
                rdp = self._rdp[cpu_id]
                rdp.qs_pending = True
                rdp.eqs_since_gp = False
                rdp.ticks_at_gp_start = cpus[cpu_id].ticks
                rdp.gp_noticed = False
                holdouts.cpus.add(cpu_id)
            task.charge(self._qs_report_ns * max(0, n_idle - len(woke)))
            holdouts.fence(task.now_ns)
            tp = self.kernel.tracer.tp
            if tp.rcu_fqs or tp.rcu_qs:
                g = signed_seq(self.core.gp_seq.current)
                at_start = self._gp_nonidle_at_start
                for cpu in cpus:
                    c = cpu.id
                    if cpu.online and c != me and c not in nonidle and c not in at_start:
                        if tp.rcu_fqs:
                            self._emit(me, task.comm, task.pid, task.now_ns, "rcu_fqs",
                                       f"{self.name} {g} {c} dti")
                        if tp.rcu_qs:
                            self._trace_qs(c, task.comm, task.pid, task.now_ns, "dti")
        tp = self.kernel.tracer.tp
        for cpu_id in sorted(holdouts.cpus):
            rdp = self._rdp[cpu_id]
            if cpu_id in nonidle and not rdp.eqs_since_gp:
                continue
            rdp.qs_pending = False
            task.charge(self._qs_report_ns)
            self._qs_reports += 1
            if tp.rcu_fqs:
                self._emit(me, task.comm, task.pid, task.now_ns, "rcu_fqs",
                           f"{self.name} {signed_seq(self.core.gp_seq.current)} {cpu_id} dti")
            if tp.rcu_qs:
                self._trace_qs(cpu_id, task.comm, task.pid, task.now_ns, "dti")
            holdouts.report_cpu(cpu_id, task.now_ns)

    def rcu_gp_init(self, task: Task) -> None:
        """``rcu_gp_init``: start the GP and snapshot who must pass a QS for it."""
        now = task.now_ns
        gp = self.core.gp_seq.start()
        self._gp_start_ns = now
        holdouts = self._holdouts
        holdouts.end_fence = now
        me = task.cpu.id  # the kthread's own CPU is quiescent right now
        cpus = self.kernel.sim.cpus
        for cpu_id in self._nonidle:
            if cpu_id == me:
                continue
            rdp = self._rdp[cpu_id]
            rdp.qs_pending = True
            rdp.eqs_since_gp = False
            rdp.ticks_at_gp_start = cpus[cpu_id].ticks
            rdp.gp_noticed = False
            holdouts.cpus.add(cpu_id)
        holdouts.tasks.update(self.readers.blocked)
        # The idle CPUs are in qsmask too; the first FQS scan finds them.
        self._gp_nonidle_at_start = set(holdouts.cpus)
        self._fqs_idle_pending = self.hotplug.n_online - 1 > len(holdouts.cpus)
        self._n_force_qs_gpstart = self.n_force_qs
        if self.kernel.tracer.tp.rcu_grace_period:
            g = signed_seq(gp)
            self._emit(me, task.comm, task.pid, now, "rcu_grace_period", f"{self.name} {g} start")
            # rcu_gp_init() runs __note_gp_changes() for its own CPU only; the others notice
            # the GP in their own rcu_core() (rcu_note_gp_changes below).
            self._emit(me, task.comm, task.pid, now, "rcu_grace_period",
                       f"{self.name} {g} cpustart")
        self.stall.record_gp_stall_check_time(task.cpu, now)

    def rcu_gp_cleanup(self, task: Task) -> None:
        """``rcu_gp_cleanup``: end the GP, wake its waiters and the CPUs whose callbacks waited."""
        now = task.now_ns
        core = self.core
        waiters = core.gp_seq.end()
        self._gp_durations.append(now - self._gp_start_ns)
        self.stall.gp_ended()
        tracer = self.kernel.tracer
        if tracer.on:
            g = signed_seq(core.gp_seq.current)
            self._emit(task.cpu.id, task.comm, task.pid, now, "rcu_grace_period",
                       f"{self.name} {g} end")
            tracer.emit("rcu_gp", self._gp_start_ns, task.cpu.id, task.comm, task.pid,
                        f"{self.name} g={g}", ph="X", dur_ns=now - self._gp_start_ns,
                        track="rcu_gp")
        for w in waiters:
            w(now)

    def _emit(self, cpu: int, comm: str, pid: int, ts: int, name: str, fields: str) -> None:
        self.kernel.tracer.emit(name, ts, cpu, comm, pid, fields)

    # ================================================================== callbacks

    def call_rcu(self, task: Task, head: RcuHead, func: RcuCallback) -> None:
        """``call_rcu(head, func)``: ``func(task, head)`` runs after a full grace period.

        The head is queued on the calling CPU's segmented list (the callback is stored in
        ``head.func``); charges ``call_rcu_ns``. As in ``__call_rcu_core``, it is given a grace
        period at once only when none is running; otherwise the CPU's next tick, idle entry or
        ``rcuc`` pass accelerates it (``rcu_core``).
        """
        self.cbs.call_rcu(task, head, func)

    async def rcu_barrier(self, task: Task) -> None:
        """Wait until every callback queued before the call has been invoked.

        Entrains a barrier callback behind each CPU's queued ones and waits for them all; with
        nothing queued anywhere it returns without waiting for a grace period. Concurrent
        callers share the work through ``barrier_sequence``.
        """
        await self.cbs.rcu_barrier(task)

    def queue_rcu_work(self, task: Task, wq: Workqueue, rwork: RcuWork) -> bool:
        """Queue ``rwork`` on ``wq`` after a grace period; False if it is already pending.

        The work is queued on the CPU that invokes the RCU callback (the queueing CPU, unless
        that CPU went offline meanwhile), as ``rcu_work_rcufn`` does.
        """
        return self.cbs.queue_rcu_work(task, wq, rwork)

    async def flush_rcu_work(self, task: Task, rwork: RcuWork) -> bool:
        """Wait for ``rwork``'s grace period and run; False if it was idle (kernel semantics)."""
        return await self.cbs.flush_rcu_work(task, rwork)

    # ================================================================== synchronous waits

    async def synchronize_rcu(self, task: Task) -> None:
        """Wait for a full normal grace period; concurrent callers share one.

        The kernel's is ``wait_rcu_gp(call_rcu)``: it returns when a ``wakeme_after_rcu``
        callback runs, i.e. on the caller's CPU's first tick after the GP end (v5.9 and v6.1
        ``kernel/rcu/update.c``, ``__wait_rcu_gp``).
        """
        self._may_block(task, "synchronize_rcu")
        await task.sync()
        s = self._snap(task.now_ns)
        wq = WaitQueue("synchronize_rcu")
        wakeme = Timer("wakeme_after_rcu", functools.partial(_wakeme_after_rcu, wq))
        tick = self._tick_ns
        arm_timer = self.kernel.sim.arm_timer

        def gp_done(now: int) -> None:
            arm_timer(wakeme, task.cpu, (now // tick + 1) * tick)

        self.core.gp_seq.add_waiter(s, gp_done)
        self.rcu_start_this_gp(s, task.now_ns)
        while not self.core.gp_seq.done(s) or wakeme.pending:
            await task.block(wq, "synchronize_rcu")

    async def synchronize_rcu_expedited(self, task: Task) -> None:
        """Wait for an expedited GP: IPI the busy CPUs instead of waiting for their ticks.

        Charges ``expedited_ipi_ns`` per CPU targeted. Tracked by ``expedited_sequence``;
        concurrent callers share expedited GPs.
        """
        await self.exp.synchronize_rcu_expedited(task)

    # ================================================================== polled API

    def _caller_ns(self, task: Task | None) -> int:
        if task is not None:
            return task.now_ns
        sim = self.kernel.sim
        running = sim.running
        return running.now_ns if running is not None else sim.now_ns

    async def _cond_synchronize(self, task: Task, what: str, done: Callable[[], bool]) -> None:
        """``cond_synchronize_rcu*``: ``synchronize_rcu()`` unless ``done()`` once synced."""
        self._may_block(task, what)
        await task.sync()
        if not done():
            await self.synchronize_rcu(task)

    def get_state_synchronize_rcu(self, task: Task | None = None) -> int:
        """A cookie for :meth:`poll_state_synchronize_rcu`; starts no GP.

        ``task`` is the caller (default: whichever task holds the baton), whose local time
        stamps the snapshot so no GP can start in the caller's past.
        """
        return self._snap(self._caller_ns(task))

    def start_poll_synchronize_rcu(self, task: Task) -> int:
        """Like :meth:`get_state_synchronize_rcu`, and make sure the needed GP will run."""
        s = self.get_state_synchronize_rcu(task)
        self.rcu_start_this_gp(s, task.now_ns)
        return s

    def poll_state_synchronize_rcu(self, cookie: int) -> bool:
        """Has a full GP elapsed since ``cookie`` was taken? Never blocks, wrap-safe."""
        return self.core.poll(cookie)

    async def cond_synchronize_rcu(self, task: Task, cookie: int) -> None:
        """``synchronize_rcu()`` only if the GP ``cookie`` needs has not already ended."""
        poll = functools.partial(self.core.poll, cookie)
        await self._cond_synchronize(task, "cond_synchronize_rcu", poll)

    @staticmethod
    def get_completed_synchronize_rcu() -> int:
        """A cookie that every poll reports as done (``RCU_GET_STATE_COMPLETED``)."""
        return RCU_GET_STATE_COMPLETED

    def get_state_synchronize_rcu_full(self, task: Task | None = None) -> RcuGpOldState:
        """``rcu_gp_oldstate`` snapshot: satisfied by a normal *or* an expedited GP."""
        t = self._caller_ns(task)
        return RcuGpOldState(self._snap(t), self.exp.exp_snap(t))

    def start_poll_synchronize_rcu_full(self, task: Task) -> RcuGpOldState:
        """Like :meth:`get_state_synchronize_rcu_full`, and make sure the normal GP will run."""
        old = self.get_state_synchronize_rcu_full(task)
        self.rcu_start_this_gp(old.rgos_norm, task.now_ns)
        return old

    def poll_state_synchronize_rcu_full(self, old: RcuGpOldState) -> bool:
        """Has a normal or an expedited GP elapsed since ``old``? Never blocks."""
        return self.core.poll_full(old)

    async def cond_synchronize_rcu_full(self, task: Task, old: RcuGpOldState) -> None:
        """``synchronize_rcu()`` only if neither GP ``old`` can use has ended."""
        poll = functools.partial(self.core.poll_full, old)
        await self._cond_synchronize(task, "cond_synchronize_rcu_full", poll)

    @staticmethod
    def get_completed_synchronize_rcu_full() -> RcuGpOldState:
        """An ``rcu_gp_oldstate`` that every poll reports as done."""
        return RcuGpOldState.completed()

    @property
    def gp_seq(self) -> int:
        """``rcu_state.gp_seq`` (wrapped; starts 300 GPs below the wrap as the kernel's does)."""
        return self.core.gp_seq.current

    @property
    def expedited_sequence(self) -> int:
        """``rcu_state.expedited_sequence``: the ``rcu_seq`` of expedited GPs (``tree_exp.h``)."""
        return self.core.expedited_sequence.current

    # ================================================================== CPU hotplug

    def add_hotplug_callback(self, fn: HotplugCallback) -> None:
        """Call ``fn(task, cpu_id, online)`` after each CPU down (False) or up (True)."""
        self.hotplug.add_hotplug_callback(fn)

    async def cpu_down(self, task: Task, cpu_id: int) -> None:
        """Take ``cpu_id`` offline from ``task`` (on another CPU).

        Its tasks move to the caller's CPU (a reader caught inside its section becomes a
        blocked reader), it stops holding up grace periods, and its callbacks move to the
        caller's CPU, re-accelerated so none runs early and none is lost.
        """
        await self.hotplug.cpu_down(task, cpu_id)

    async def cpu_up(self, task: Task, cpu_id: int) -> None:
        """Bring ``cpu_id`` back online (idle, with an empty callback list)."""
        await self.hotplug.cpu_up(task, cpu_id)

    # ================================================================== introspection

    def statistics(self) -> RcuStats:
        gp_seq = self.core.gp_seq
        cbs = self.cbs
        durations = self._gp_durations
        return RcuStats(
            gp_seq=gp_seq.current,
            started_gps=gp_seq.started,
            completed_gps=gp_seq.completed,
            expedited_gps=self.core.expedited_sequence.completed,
            callbacks_queued=cbs.queued,
            callbacks_invoked=cbs.invoked,
            callbacks_pending=cbs.pending,
            stalls=self.stall.stalls,
            barriers=cbs.barriers,
            qs_reports=self._qs_reports,
            blocked_readers=len(self.readers.blocked),
            cpus_online=self.hotplug.n_online,
            gp_duration_p50_ns=median_low(durations) if durations else 0,
            gp_duration_max_ns=max(durations, default=0),
            fqs_scans=self.n_force_qs,
            double_call_rcu=cbs.double_call_rcu,
        )

    def gp_durations_ns(self) -> list[int]:
        """The duration of every normal GP ended so far, in ns, oldest first (a copy)."""
        return list(self._gp_durations)

    def rcu_data(self, cpu_id: int) -> RcuData:
        """The ``rcu_data`` of ``cpu_id`` (its callback list, QS state, rcuc kthread)."""
        return self._rdp[cpu_id]

    def stall_text(self, detector: Cpu) -> str:
        """The kernel's stall report for the current GP, as seen from ``detector``."""
        return self.stall.print_other_cpu_stall(detector)
