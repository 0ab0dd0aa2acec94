"""Workqueues on simulated CPUs: ``queue_work``, delayed work, flush and cancel.

Work queued from a CPU runs on that CPU's kworker (``WORK_CPU_UNBOUND`` picks the local CPU in
the kernel too), so per-CPU data such as a ``krcp`` is touched by its own CPU's clock. kworkers
are created lazily, so a thousand idle CPUs own no tasks. A worker passes a quiescent state
between items (``cond_resched``), as kworkers do.
"""

from __future__ import annotations

import contextlib
import zlib
from collections import deque
from collections.abc import Awaitable, Callable

import attrs

from rcukit.errors import LockUsageError, MemoryDebugError, RcuUsageError
from rcukit.locking.checker import LockChecker
from rcukit.sched.sim import Simulator, Task, Timer, WaitQueue
from rcukit.trace.events import Tracer

WorkFn = Callable[[Task, "Work"], Awaitable[None]]


class Work:
    """A ``work_struct``."""

    __slots__ = ("cpu", "done", "func", "name", "queued", "running", "runs", "wq")

    def __init__(self, name: str, func: WorkFn) -> None:
        self.name = name
        self.func = func
        self.queued = False
        self.running = False
        self.cpu = -1
        self.wq: Workqueue | None = None
        self.done = WaitQueue(f"flush:{name}")
        self.runs = 0

    @property
    def pending(self) -> bool:
        return self.queued


def work_fields(work: Work) -> str:
    """What ``workqueue_execute_start`` and (v5.6+) ``workqueue_execute_end`` print:
    ``work struct %p: function %ps`` (include/trace/events/workqueue.h). ``%p`` prints a
    hashed pointer (``ptr_to_id()``: 32 bits, zero-extended), here a hash of the work's name
    so it is the same on every run; ``%ps`` the work function's symbol, which is the name's
    part before ``/`` (work items are named after their kernel work function:
    ``kfree_rcu_monitor/0``, ``kfree_rcu_work/1.0``...)."""
    name = work.name
    return f"work struct {zlib.crc32(name.encode()):016x}: function {name.partition('/')[0]}"


class DelayedWork(Work):
    """A ``delayed_work``: a timer that queues the work when it fires."""

    __slots__ = ("timer",)

    def __init__(self, name: str, func: WorkFn) -> None:
        super().__init__(name, func)
        self.timer = Timer(f"dwork:{name}", self._fire)

    def _fire(self, timer: Timer) -> None:
        wq = self.wq
        assert wq is not None and timer.cpu is not None
        wq._enqueue(self, timer.cpu.id, timer.cpu.local_ns)

    @property
    def pending(self) -> bool:
        return self.queued or self.timer.pending


class _Pool:
    """One CPU's worker pool of one workqueue: pending items, idle workers, busy workers."""

    __slots__ = ("cpu", "idle", "items", "nr_busy", "workers")

    def __init__(self, cpu: int) -> None:
        self.cpu = cpu
        self.items: deque[Work] = deque()
        #: Workers asleep in ``worker_thread`` waiting for items (most recent last).
        self.idle: list[Task] = []
        self.workers: list[Task] = []
        #: Workers processing an item and not asleep inside it.
        self.nr_busy = 0


@attrs.define(eq=False)
class Workqueue:
    """One workqueue (``system_wq``, ``system_highpri_wq``...) with a pool per CPU.

    It is built from the scheduler, the lock checker and the tracer alone (the kernel's
    ``workqueue_init_early()`` runs before any subsystem exists), so every subsystem may use it.
    """

    sim: Simulator
    locks: LockChecker
    tracer: Tracer
    name: str
    #: What ``queue_work`` charges the caller, and one jiffy (delayed work's unit).
    queue_work_ns: int = attrs.field(kw_only=True)
    tick_ns: int = attrs.field(kw_only=True)
    highpri: bool = attrs.field(default=False, kw_only=True)
    _pools: dict[int, _Pool] = attrs.field(factory=dict, init=False)
    items_run: int = attrs.field(default=0, init=False)

    def _pool(self, cpu: int) -> _Pool:
        pool = self._pools.get(cpu)
        if pool is None:
            pool = self._pools[cpu] = _Pool(cpu)
        return pool

    def _enqueue(self, work: Work, cpu: int, now_ns: int) -> None:
        work.queued = True
        work.cpu = cpu
        work.wq = self
        pool = self._pool(cpu)
        pool.items.append(work)
        if pool.nr_busy == 0:
            self._get_worker(pool, now_ns)

    def _get_worker(self, pool: _Pool, now_ns: int) -> None:
        """Wake an idle worker, or create one: a pool keeps one worker running while it has work."""
        if pool.idle:
            worker = pool.idle.pop()
            worker.data["wq_wait"].wake_one(now_ns)
            pool.nr_busy += 1
            return
        suffix = "H" if self.highpri else ""
        n = len(pool.workers)
        worker = self.sim.spawn(
            self._worker_main, pool.cpu, f"kworker/{pool.cpu}:{n}{suffix}", at_ns=now_ns
        )
        worker.data["wq_pool"] = (self, pool)
        worker.data["wq_wait"] = WaitQueue(f"worker_thread:{worker.comm}")
        worker.data["wq_item"] = False
        pool.workers.append(worker)
        pool.nr_busy += 1

    def worker_sleeping(self, task: Task, pool: _Pool) -> None:
        """``wq_worker_sleeping``: a worker blocked inside an item; keep the pool going."""
        pool.nr_busy -= 1
        task.data["wq_slept"] = True
        if pool.items and pool.nr_busy == 0:
            self._get_worker(pool, task.now_ns)

    async def _worker_main(self, task: Task) -> None:
        pool = self._pool(task.cpu.id)
        tracer = self.tracer
        while True:
            while pool.items:
                work = pool.items.popleft()
                work.queued = False
                work.running = True
                task.data["wq_item"] = work
                if tracer.tp.workqueue_execute_start:
                    tracer.emit(
                        "workqueue_execute_start", task.now_ns, task.cpu.id, task.comm,
                        task.pid, work_fields(work),
                    )
                try:
                    await work.func(task, work)
                except (MemoryDebugError, RcuUsageError, LockUsageError) as err:
                    self.process_one_work_failed(task, work, err)
                if tracer.tp.workqueue_execute_end:
                    tracer.emit(
                        "workqueue_execute_end", task.now_ns, task.cpu.id, task.comm,
                        task.pid, work_fields(work),
                    )
                task.data["wq_item"] = False
                if task.data.pop("wq_slept", False):
                    pool.nr_busy += 1
                work.running = False
                work.runs += 1
                self.items_run += 1
                if work.done.waiters:
                    await task.sync()
                    work.done.wake_all(task.now_ns)
                await task.cond_resched()
            pool.nr_busy -= 1
            pool.idle.append(task)
            await task.block(task.data["wq_wait"], "worker_thread")


    def process_one_work_failed(self, task: Task, work: Work, err: Exception) -> None:
        """A work function hit a bug rcukit's checks catch: report it and go on.

        In the kernel the check itself reports (KASAN, ``bad_page()``, a ``WARN()``) and the
        function goes on or returns; an error rcukit raises unwinds the Python function, so
        the rest of this item is abandoned, like a work function that returns at its
        ``if (WARN_ON(...)) return;``. The worker then runs the pool's next item with a clean
        context (locks it held dropped, preemption, IRQs and RCU nesting reset), as the pool's
        next worker would after an oops killed this one (``make_task_dead()``). Memory errors
        are reported as the detector prints them, the rest as a WARNING in the work function
        (lib/bug.c ``report_bug()``, kernel/panic.c ``__warn()``, v5.9)."""
        panic = self.locks.panic
        chain, wq = current_frames(task)
        if isinstance(err, MemoryDebugError) and err.kind:
            panic.kasan_report_invalid_free(task, err, chain[0], chain, workqueue=wq)
        elif isinstance(err, MemoryDebugError):
            panic.bad_page(task, err, chain, workqueue=wq)
        else:
            panic.warn(task, chain[0], chain, message=str(err), workqueue=wq)
        for h in reversed(task.held_locks):
            h.lock.owner = None
            h.lock.free_at_ns = task.now_ns
        task.held_locks.clear()
        task.preempt_count = task.irqs_disabled = task.rcu_read_nesting = 0

    # -- the API -----------------------------------------------------------------------------
    def queue_work(self, task: Task | None, work: Work, cpu: int | None = None) -> bool:
        """Queue on ``cpu`` (default: the caller's); False if already pending, as in the kernel."""
        if work.pending:
            return False
        if task is not None:
            task.charge(self.queue_work_ns)
        target = cpu if cpu is not None else (task.cpu.id if task is not None else 0)
        now = task.now_ns if task is not None else self.sim.now_ns
        self._enqueue(work, target, now)
        return True

    def queue_delayed_work(
        self, task: Task | None, dwork: DelayedWork, delay_jiffies: int, cpu: int | None = None
    ) -> bool:
        if dwork.pending:
            return False
        if delay_jiffies <= 0:
            return self.queue_work(task, dwork, cpu)
        sim = self.sim
        target = cpu if cpu is not None else (task.cpu.id if task is not None else 0)
        now = task.now_ns if task is not None else sim.now_ns
        dwork.wq = self
        sim.arm_timer(dwork.timer, sim.cpus[target], now + delay_jiffies * self.tick_ns)
        return True

    def mod_delayed_work(
        self, task: Task | None, dwork: DelayedWork, delay_jiffies: int, cpu: int | None = None
    ) -> bool:
        """Re-arm (or queue) ``dwork`` to run ``delay_jiffies`` from now; True if it was pending."""
        was = self._grab(dwork)
        self.queue_delayed_work(task, dwork, delay_jiffies, cpu)
        return was

    def _grab(self, dwork: Work) -> bool:
        was = False
        if isinstance(dwork, DelayedWork) and self.sim.cancel_timer(dwork.timer):
            was = True
        if dwork.queued and dwork.wq is not None:
            pool = dwork.wq._pool(dwork.cpu)
            with contextlib.suppress(ValueError):
                pool.items.remove(dwork)
            dwork.queued = False
            was = True
        return was

    async def flush_work(self, task: Task, work: Work) -> bool:
        """Wait for the last queueing of ``work`` to finish; False if there was nothing to wait."""
        if not (work.pending or work.running):
            return False
        self.locks.might_sleep(task, "flush_work")
        while work.pending or work.running:
            await task.block(work.done, f"flush_work:{work.name}")
        return True

    async def cancel_delayed_work_sync(self, task: Task, dwork: Work) -> bool:
        was = self._grab(dwork)
        if dwork.running:
            await self.flush_work(task, dwork)
        elif was and dwork.done.waiters:
            # Its flushers wait for a run that will never come: release them (the kernel's
            # flush barrier still runs when the work it follows is cancelled).
            await task.sync()
            dwork.done.wake_all(task.now_ns)
        return was

    @staticmethod
    def delayed_work_pending(dwork: DelayedWork) -> bool:
        return dwork.pending


def symbol_of(fn: object) -> str:
    """The kernel symbol a Python function models: its name (a ``partial``'s function's)."""
    inner = getattr(fn, "func", fn)
    return str(getattr(inner, "__name__", "") or type(inner).__name__)


def current_frames(task: Task) -> tuple[list[str], str]:
    """The kernel call chain of ``task`` below the function that found a bug, outermost
    last, and ``print_worker_info()``'s "Workqueue:" text for a kworker ("" otherwise).

    A kworker runs ``work->func`` from ``process_one_work()`` in ``worker_thread()``; another
    kthread's function runs from ``kthread()``; both start at ``ret_from_fork``. A workload
    task is the function it was spawned with."""
    work = task.data.get("wq_item")
    if isinstance(work, Work):
        fn = symbol_of(work.func)
        wq = work.wq.name if work.wq is not None else ""
        return [fn, "process_one_work", "worker_thread", "kthread", "ret_from_fork"], f"{wq} {fn}"
    fn = symbol_of(task.fn)
    if task.is_workload:
        return [fn], ""
    return [fn, "kthread", "ret_from_fork"], ""


def wq_worker_sleeping(prev: Task) -> None:
    """Scheduler hook: a kworker that blocks in the middle of an item hands its pool on."""
    if prev.state == "R" or not prev.data.get("wq_item") or prev.data.get("wq_slept"):
        return
    wq, pool = prev.data["wq_pool"]
    wq.worker_sleeping(prev, pool)
