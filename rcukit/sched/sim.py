"""A deterministic scheduler for simulated CPUs, built on Trio tasks.

Why not one ``await`` per simulated operation: a Trio scheduling pass costs microseconds and a
MockClock jump about 20 µs, so a simulation that yields per ``kvfree_rcu()`` cannot be fast.
Instead each CPU keeps its own *local* virtual time and operations charge their cost to it
synchronously (:meth:`Task.charge`). Exactly one simulated task runs at any moment (it holds the
"baton"); it hands the baton on only where it must:

* at a **tick** boundary (every ``1/HZ``), where the CPU runs expired timers, its RCU tick and
  softirq work, and lets an earlier CPU catch up;
* before touching **shared state** (:meth:`Task.sync`): the zone lock, the grace-period state, a
  wake-up of a task on another CPU. ``sync`` hands the baton to any CPU whose local time is
  earlier, so when shared state is touched at time *t* nobody has touched it at a later time:
  no CPU observes another CPU's future;
* when the task **blocks** or **sleeps**.

Per-CPU state (a CPU's pcp lists, its ``krcp``) needs no hand-off: only that CPU's tasks touch it,
and they run in order on that CPU's clock. The CPU that resumes is always the one with the
earliest time (ties broken by a sequence number), so for a given config and seed the whole run is
the same, byte for byte, whatever Trio's own scheduler does: Trio only ever has one of our tasks
runnable.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import trio
import trio.testing

from rcukit.errors import SimulationError
from rcukit.locking.checker import LockChecker
from rcukit.locking.locks import HeldLock

TaskFn = Callable[["Task"], Awaitable[object]]

RUNNABLE = "R"
BLOCKED = "D"
SLEEPING = "S"
DEAD = "X"


#: A simulated CPU yields to Trio at every 16th tick of its own (a Trio checkpoint, costing
#: a few microseconds per 16 simulated milliseconds at HZ=1000), so that a cancel from outside
#: reaches a simulation that never hands the baton to another task. Nothing else runs in
#: between that could touch the simulation: results do not depend on it.
_TRIO_CHECKPOINT_TICKS_MASK = 15

class SchedHooks(Protocol):
    """What the scheduler tells the rest of the kernel (RCU, mostly). All calls are synced."""

    def on_tick(self, task: Task, voluntary: bool) -> None: ...

    def on_context_switch(self, prev: Task) -> None: ...

    def on_idle_enter(self, cpu: Cpu) -> None: ...

    def on_idle_exit(self, cpu: Cpu) -> None: ...


class _NoHooks:
    def on_tick(self, task: Task, voluntary: bool) -> None:
        pass

    def on_context_switch(self, prev: Task) -> None:
        pass

    def on_idle_enter(self, cpu: Cpu) -> None:
        pass

    def on_idle_exit(self, cpu: Cpu) -> None:
        pass


class Timer:
    """A kernel timer armed on one CPU; ``func`` runs in (soft)irq context, so it must not block."""

    __slots__ = ("cpu", "expires_ns", "func", "name", "pending", "seq")

    def __init__(self, name: str, func: Callable[[Timer], None]) -> None:
        self.name = name
        self.func = func
        self.expires_ns = 0
        self.pending = False
        self.cpu: Cpu | None = None
        self.seq = 0


class Cpu:
    """One simulated CPU: its local clock, run queue, timers and online/idle state."""

    def __init__(self, sim: Simulator, cpu_id: int) -> None:
        self.sim = sim
        self.id = cpu_id
        self.local_ns = 0
        self.next_tick_ns = sim.tick_ns
        self.current: Task | None = None
        self.runqueue: deque[Task] = deque()
        self.online = True
        self.idle = True
        self.need_resched = False
        self.timers: list[tuple[int, int, Timer]] = []
        self.heap_seq = -1
        self.nr_switches = 0
        self.ticks = 0
        #: Simulated time spent idle; ``busy_ns()`` is the CPU time all charges added up to.
        self.idle_ns = 0
        self.idle_since = 0
        #: Per-CPU data other subsystems hang here (pcp lists, krcp, rcu_data...).
        self.data: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Cpu {self.id} t={self.local_ns} {'idle' if self.idle else 'busy'}>"

    def busy_ns(self) -> int:
        idle = self.idle_ns + (self.local_ns - self.idle_since if self.idle else 0)
        return self.local_ns - idle

    def next_timer_ns(self) -> int | None:
        timers = self.timers
        while timers and not (timers[0][2].pending and timers[0][1] == timers[0][2].seq):
            heapq.heappop(timers)
        return timers[0][0] if timers else None


class Task:
    """A simulated kernel thread bound to one CPU, with the context lockdep looks at."""

    def __init__(self, sim: Simulator, name: str, pid: int, cpu: Cpu, fn: TaskFn) -> None:
        self.sim = sim
        self.name = name
        self.pid = pid
        self.cpu = cpu
        self.fn = fn
        self.state = RUNNABLE
        self.trio_task: trio.lowlevel.Task | None = None
        self.resume_on_start = False
        self.preempt_count = 0
        self.irqs_disabled = 0
        self.in_hardirq = 0
        self.in_softirq = 0
        self.held_locks: list[HeldLock] = []
        self.rcu_read_nesting = 0
        self.rcu_blocked_reader = False
        self.waiting_on: str = ""
        self.is_workload = False
        self.result: object = None
        self.exited = trio.Event()
        self.data: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"<Task {self.comm}/{self.pid} cpu={self.cpu.id} {self.state}>"

    @property
    def comm(self) -> str:
        return self.name

    # -- time -------------------------------------------------------------------------------
    @property
    def now_ns(self) -> int:
        """This CPU's local virtual time."""
        return self.cpu.local_ns

    def charge(self, ns: int) -> None:
        """Spend ``ns`` of simulated CPU time; never yields (the hot path)."""
        self.cpu.local_ns += ns

    def in_atomic(self) -> bool:
        return bool(self.preempt_count or self.irqs_disabled or self.in_hardirq)

    # -- hand-off points ----------------------------------------------------------------------
    async def sync(self) -> None:
        """Let every CPU whose clock is behind ours run first (before touching shared state)."""
        sim = self.sim
        cpu = self.cpu
        if sim.min_other_ns() < cpu.local_ns:
            sim.push_cpu(cpu, cpu.local_ns)
            await sim.hand_off(self)

    async def cond_resched(self) -> None:
        """``cond_resched()``: a voluntary schedule point (and an RCU quiescent state)."""
        cpu = self.cpu
        if cpu.local_ns >= cpu.next_tick_ns or cpu.need_resched:
            await self.sim.schedule_point(self, voluntary=True)

    async def preempt_point(self) -> None:
        """Where pending interrupts and preemption land (``preempt_enable``, irq restore)."""
        cpu = self.cpu
        if (cpu.local_ns >= cpu.next_tick_ns or cpu.need_resched) and not self.in_atomic():
            await self.sim.schedule_point(self, voluntary=False)

    async def sleep_ns(self, ns: int) -> None:
        """``schedule_timeout``: block for ``ns`` of simulated time.

        ``schedule_timeout()`` arms a timer and calls ``schedule()``, whose ``schedule_debug()``
        prints "BUG: scheduling while atomic" (``__schedule_bug``) when preemption is off: a
        raw spinlock, a softirq, a non-preemptible RCU reader. The lock model checks that here
        (``LockChecker.schedule``); with only IRQs off ``schedule()`` reports nothing.
        """
        if self.preempt_count or self.in_hardirq or self.in_softirq:
            locks = self.sim.locks
            if locks is not None:
                locks.schedule(self, "schedule_timeout")
        await self.sim.sleep(self, ns)

    async def block(self, wq: WaitQueue, reason: str = "") -> None:
        """Sleep on a wait queue until :meth:`WaitQueue.wake_all` or ``wake_one``."""
        await self.sim.block(self, wq, reason)

    async def yield_cpu(self) -> None:
        """``schedule()`` with the task still runnable: let others on this CPU run."""
        self.cpu.need_resched = True
        await self.sim.schedule_point(self, voluntary=True)

    # -- context ------------------------------------------------------------------------------
    @contextmanager
    def hardirq(self) -> Iterator[None]:
        self.in_hardirq += 1
        self.irqs_disabled += 1
        try:
            yield
        finally:
            self.irqs_disabled -= 1
            self.in_hardirq -= 1

    @contextmanager
    def softirq(self) -> Iterator[None]:
        self.in_softirq += 1
        self.preempt_count += 1
        try:
            yield
        finally:
            self.preempt_count -= 1
            self.in_softirq -= 1


class WaitQueue:
    """A ``wait_queue_head_t``: tasks block on it, a synced waker makes them runnable."""

    __slots__ = ("name", "waiters")

    def __init__(self, name: str) -> None:
        self.name = name
        self.waiters: deque[Task] = deque()

    def wake_all(self, now_ns: int) -> int:
        n = 0
        while self.waiters:
            task = self.waiters.popleft()
            task.sim.make_runnable(task, now_ns)
            n += 1
        return n

    def wake_one(self, now_ns: int) -> bool:
        if not self.waiters:
            return False
        task = self.waiters.popleft()
        task.sim.make_runnable(task, now_ns)
        return True

    def __len__(self) -> int:
        return len(self.waiters)


class Simulator:
    """The baton: which CPU runs next, and the Trio plumbing to hand over.

    A stale-entry heap of ``(time, seq, cpu)`` holds every CPU that has something to do: a
    runnable current task (keyed by its local time) or, when idle, its next timer. Idle CPUs
    with nothing armed are not in the heap at all, so a thousand idle CPUs cost nothing.
    """

    def __init__(self, nr_cpus: int, tick_ns: int, hooks: SchedHooks | None = None) -> None:
        self.tick_ns = tick_ns
        self.cpus = [Cpu(self, i) for i in range(nr_cpus)]
        self.hooks: SchedHooks = hooks or _NoHooks()
        self._heap: list[tuple[int, int, Cpu]] = []
        self._seq = 0
        self._next_pid = 1
        self.now_ns = 0
        self.tasks: list[Task] = []
        self.live_workload = 0
        self._driver: trio.lowlevel.Task | None = None
        self._driver_waiting = False
        self._nursery: trio.Nursery | None = None
        self._clock: trio.testing.MockClock | None = None
        self._clock_base = 0.0
        self.handoffs = 0
        #: The task holding the baton (None while the driver has it); RCU stamps cookies with
        #: its clock when a caller does not pass its task.
        self.running: Task | None = None
        #: Charged to a CPU per context switch (set from the cost model by the Kernel).
        self.switch_cost_ns = 0
        #: The lock model ``schedule()`` reports sleeping in atomic context to (set by the
        #: Machine; None for a bare scheduler).
        self.locks: LockChecker | None = None
        self.finished = False
        self.error: BaseException | None = None

    # -- heap -----------------------------------------------------------------------------------
    def push_cpu(self, cpu: Cpu, at_ns: int) -> None:
        self._seq += 1
        cpu.heap_seq = self._seq
        heapq.heappush(self._heap, (at_ns, self._seq, cpu))

    def max_local_ns(self) -> int:
        """The furthest any CPU's clock has got: the simulated duration of a finished run."""
        return max(c.local_ns for c in self.cpus)

    def min_other_ns(self) -> int:
        """Earliest time any *other* CPU will run at (a large number if none)."""
        heap = self._heap
        while heap:
            t, seq, cpu = heap[0]
            if seq == cpu.heap_seq:
                return t
            heapq.heappop(heap)
        return 1 << 62

    def _pop(self) -> tuple[int, Cpu] | None:
        heap = self._heap
        while heap:
            t, seq, cpu = heapq.heappop(heap)
            if seq == cpu.heap_seq:
                cpu.heap_seq = -1
                return t, cpu
        return None

    # -- task lifecycle -------------------------------------------------------------------------
    def new_pid(self) -> int:
        pid = self._next_pid
        self._next_pid += 1
        return pid

    def spawn(
        self, fn: TaskFn, cpu: int, name: str, *, workload: bool = False, at_ns: int | None = None
    ) -> Task:
        """Create a task on ``cpu``; it becomes runnable at ``at_ns`` (default: now).

        Synchronous so timers and workqueues can create kthreads; the Trio task starts later
        and, if the baton reached it first, runs straight away instead of parking.
        """
        if self._nursery is None:
            raise SimulationError("the simulator is not running (use rcukit.sim.boot())")
        if not 0 <= cpu < len(self.cpus):
            raise SimulationError(f"cpu {cpu} does not exist; allowed: 0 .. {len(self.cpus) - 1}")
        task = Task(self, name, self.new_pid(), self.cpus[cpu], fn)
        task.is_workload = workload
        task.state = BLOCKED
        self.tasks.append(task)
        if workload:
            self.live_workload += 1
        self._nursery.start_soon(self._task_main, task, name=f"rcukit:{name}/{task.pid}")
        self.make_runnable(task, self.now_ns if at_ns is None else at_ns)
        return task

    async def _task_main(self, task: Task) -> None:
        task.trio_task = trio.lowlevel.current_task()
        if task.resume_on_start:
            task.resume_on_start = False
        else:
            await self._park(task)
        try:
            task.result = await task.fn(task)
        except BaseException:
            task.state = DEAD
            raise
        task.state = DEAD
        task.exited.set()
        cpu = task.cpu
        cpu.current = None
        if task.is_workload:
            self.live_workload -= 1
        self._pick_current(cpu)
        if task.is_workload and self.live_workload == 0:
            self._wake_driver()
            return
        self._resume_next(task)

    # -- state changes ------------------------------------------------------------------------
    def make_runnable(self, task: Task, at_ns: int) -> None:
        """Wake ``task`` as of time ``at_ns`` (the waker's time; the caller is synced)."""
        if task.state == RUNNABLE or task.state == DEAD:
            return
        task.state = RUNNABLE
        task.waiting_on = ""
        cpu = task.cpu
        if not cpu.online:
            # select_fallback_rq(): a task of an offlined CPU runs on an online one.
            cpu = task.cpu = self.fallback_cpu(cpu)
        if cpu.current is None:
            if cpu.local_ns < at_ns:
                cpu.local_ns = at_ns
            if cpu.idle:
                cpu.idle = False
                cpu.idle_ns += cpu.local_ns - cpu.idle_since
                self._align_tick(cpu)
                self.hooks.on_idle_exit(cpu)
            cpu.current = task
            self.push_cpu(cpu, cpu.local_ns)
        else:
            cpu.runqueue.append(task)
            cpu.need_resched = True

    def _align_tick(self, cpu: Cpu) -> None:
        tick = self.tick_ns
        cpu.next_tick_ns = (cpu.local_ns // tick + 1) * tick

    def _pick_current(self, cpu: Cpu) -> None:
        """Choose the next task on ``cpu`` after the current one stopped running."""
        if cpu.runqueue:
            cpu.current = cpu.runqueue.popleft()
            cpu.nr_switches += 1
            self.push_cpu(cpu, cpu.local_ns)
        else:
            cpu.current = None
            if not cpu.idle:
                cpu.idle = True
                cpu.idle_since = cpu.local_ns
                self.hooks.on_idle_enter(cpu)
            nt = cpu.next_timer_ns()
            if nt is not None:
                self.push_cpu(cpu, max(nt, cpu.local_ns))

    # -- timers ---------------------------------------------------------------------------------
    def arm_timer(self, timer: Timer, cpu: Cpu, expires_ns: int) -> None:
        """``mod_timer``: (re)arm ``timer`` on ``cpu``."""
        self._seq += 1
        timer.seq = self._seq
        timer.expires_ns = expires_ns
        timer.pending = True
        timer.cpu = cpu
        heapq.heappush(cpu.timers, (expires_ns, timer.seq, timer))
        if cpu.current is None:
            nt = cpu.next_timer_ns()
            if nt is not None:
                self.push_cpu(cpu, max(nt, cpu.local_ns))

    @staticmethod
    def cancel_timer(timer: Timer) -> bool:
        """``del_timer``: returns whether it was pending."""
        was = timer.pending
        timer.pending = False
        return was

    def _run_timers(self, cpu: Cpu, task: Task | None) -> None:
        timers = cpu.timers
        now = cpu.local_ns
        while timers and timers[0][0] <= now:
            _, seq, timer = heapq.heappop(timers)
            if timer.pending and seq == timer.seq:
                timer.pending = False
                timer.func(timer)

    # -- CPU hotplug ----------------------------------------------------------------------------
    def fallback_cpu(self, cpu: Cpu) -> Cpu:
        """``select_fallback_rq()``: the first online CPU after ``cpu``, wrapping around."""
        n = len(self.cpus)
        for i in range(1, n + 1):
            c = self.cpus[(cpu.id + i) % n]
            if c.online:
                return c
        raise SimulationError("no CPU is online")

    def freeze_cpu(self, cpu: Cpu) -> None:
        """First step of taking ``cpu`` down: it stops running and takes no new wake-ups.

        Its clock stops, so a synced caller can wait until its own time passes the frozen one
        before :meth:`migrate_tasks` moves the tasks: they then never run in their own past.
        """
        cpu.online = False
        cpu.heap_seq = -1

    def migrate_tasks(self, cpu: Cpu, target: Cpu) -> list[Task]:
        """Move every live task of the frozen ``cpu`` to ``target``; return the runnable ones.

        The running task (first in the list) is preempted wherever it was parked. Timers stay
        armed on ``cpu`` and still fire there (it is treated like an idle CPU), as if migrated.
        """
        moved: list[Task] = []
        if cpu.current is not None:
            moved.append(cpu.current)
            cpu.current = None
        moved.extend(cpu.runqueue)
        cpu.runqueue.clear()
        cpu.need_resched = False
        for t in self.tasks:
            if t.cpu is cpu and t.state != DEAD:
                t.cpu = target
        for t in moved:
            t.state = BLOCKED
            self.make_runnable(t, cpu.local_ns)
        if not cpu.idle:
            cpu.idle = True
            cpu.idle_since = cpu.local_ns
        nt = cpu.next_timer_ns()
        if nt is not None:
            self.push_cpu(cpu, max(nt, cpu.local_ns))
        return moved

    def online_cpu(self, cpu: Cpu, at_ns: int) -> None:
        """Bring ``cpu`` back (idle, with no tasks) as of ``at_ns``."""
        cpu.online = True
        if cpu.local_ns < at_ns:
            cpu.local_ns = at_ns  # still idle: the gap counts as idle time
        self._align_tick(cpu)

    # -- the hand-off machinery ----------------------------------------------------------------
    async def _park(self, task: Task) -> None:
        def abort(_: Any) -> trio.lowlevel.Abort:
            # Cancelled (Ctrl-C, the boot nursery closing): the task is leaving, not waiting
            # for the baton, so a later hand-off to it must not reschedule() it (Trio asserts);
            # _resume_next() then only marks it, as for a task not started yet.
            task.trio_task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    def _next_task(self) -> Task | None:
        """Pop the earliest CPU; fire due timers on idle CPUs until some task can run."""
        while True:
            popped = self._pop()
            if popped is None:
                return None
            t, cpu = popped
            if cpu.current is None:
                nt = cpu.next_timer_ns()
                if nt is None:
                    continue
                if nt > t:
                    # the timer this entry was for has been cancelled or re-armed later
                    self.push_cpu(cpu, max(nt, cpu.local_ns))
                    continue
                if cpu.local_ns < t:
                    cpu.local_ns = t
                self._advance_now(cpu.local_ns)
                self._run_timers(cpu, None)
                if cpu.current is None:
                    if cpu.runqueue:
                        self._pick_current(cpu)
                    else:
                        nt = cpu.next_timer_ns()
                        if nt is not None:
                            self.push_cpu(cpu, max(nt, cpu.local_ns))
                    continue
                # a timer woke a task here; it was pushed by make_runnable: fall through
                continue
            self._advance_now(cpu.local_ns)
            return cpu.current

    def _advance_now(self, t: int) -> None:
        if t > self.now_ns:
            self.now_ns = t
            if self._clock is not None:
                target = self._clock_base + t / 1e9
                delta = target - self._clock.current_time()
                if delta > 0:
                    self._clock.jump(delta)

    def _resume_next(self, me: Task | None) -> Task | None:
        nxt = self._next_task()
        self.running = nxt
        if nxt is None:
            self._wake_driver()
            return None
        if nxt is not me:
            self.handoffs += 1
            if nxt.trio_task is None:
                nxt.resume_on_start = True
            else:
                trio.lowlevel.reschedule(nxt.trio_task)
        return nxt

    async def hand_off(self, me: Task) -> None:
        """Give the baton to the earliest CPU (perhaps ``me`` again) and wait to get it back."""
        if self._resume_next(me) is not me:
            await self._park(me)
        else:
            # the baton came straight back, so no Trio checkpoint happened: a cancel from
            # outside (a deadline, Ctrl-C, the boot nursery closing) is taken here
            await trio.lowlevel.checkpoint_if_cancelled()

    def _wake_driver(self) -> None:
        if self._driver is not None and self._driver_waiting:
            self._driver_waiting = False
            trio.lowlevel.reschedule(self._driver)

    async def schedule_point(self, task: Task, voluntary: bool) -> None:
        """Tick processing, RCU quiescent state, and maybe a switch to another task or CPU."""
        cpu = task.cpu
        if cpu.local_ns >= cpu.next_tick_ns:
            # Let earlier CPUs catch up before this CPU's tick touches shared state.
            if self.min_other_ns() < cpu.local_ns:
                self.push_cpu(cpu, cpu.local_ns)
                await self.hand_off(task)
                cpu = task.cpu  # CPU hot-unplug may have migrated us meanwhile
            self._advance_now(cpu.local_ns)
            cpu.ticks += 1
            if not cpu.ticks & _TRIO_CHECKPOINT_TICKS_MASK:
                # a CPU running alone may never hand the baton over, and then nothing else in
                # the Trio run (a driver whose deadline passed, Ctrl-C) would get a turn
                await trio.lowlevel.checkpoint()
            self._align_tick(cpu)
            self._run_timers(cpu, task)
            self.hooks.on_tick(task, voluntary)
            if cpu.runqueue:
                # round-robin at the tick, like a timeslice running out
                cpu.need_resched = True
        if cpu.need_resched and cpu.runqueue:
            cpu.need_resched = False
            task.charge(self.switch_cost_ns)
            cpu.runqueue.append(task)
            self._switch_out(task)
            self._pick_current(cpu)
            await self.hand_off(task)
            return
        cpu.need_resched = False
        if self.min_other_ns() < cpu.local_ns:
            self.push_cpu(cpu, cpu.local_ns)
            await self.hand_off(task)

    def _switch_out(self, prev: Task) -> None:
        prev.cpu.nr_switches += 1
        self.hooks.on_context_switch(prev)

    async def sleep(self, task: Task, ns: int) -> None:
        if ns < 0:
            raise SimulationError(f"sleep of {ns} ns: the duration must be >= 0")
        cpu = task.cpu
        timer = Timer(f"sleep:{task.comm}", lambda _t: self.make_runnable(task, cpu.local_ns))
        task.state = SLEEPING
        task.waiting_on = "sleep"
        self._switch_out(task)
        cpu.current = None
        self.arm_timer(timer, cpu, cpu.local_ns + ns)
        self._pick_current(cpu)
        await self.hand_off_blocked(task)

    async def block(self, task: Task, wq: WaitQueue, reason: str) -> None:
        task.state = BLOCKED
        task.waiting_on = reason or wq.name
        wq.waiters.append(task)
        self._switch_out(task)
        cpu = task.cpu
        cpu.current = None
        self._pick_current(cpu)
        await self.hand_off_blocked(task)

    #: After blocking or sleeping: the same hand-off (a name of its own where the task left
    #: the runqueue, for the reader and the profiles).
    hand_off_blocked = hand_off

    # -- driving a run --------------------------------------------------------------------------
    def attach(self, nursery: trio.Nursery) -> None:
        """Bind to the nursery tasks are spawned in and to Trio's clock if it is a MockClock."""
        self._nursery = nursery
        clock = trio.lowlevel.current_clock()
        if isinstance(clock, trio.testing.MockClock):
            self._clock = clock
            self._clock_base = clock.current_time()

    async def drive(self) -> None:
        """Hand the baton to the simulation and wait until it is done (or stuck)."""
        self._driver = trio.lowlevel.current_task()
        while self.live_workload > 0:
            nxt = self._resume_next(None)
            if nxt is None:
                blocked = [
                    t for t in self.tasks if t.is_workload and t.state in (BLOCKED, SLEEPING)
                ]
                detail = ", ".join(f"{t.comm}/{t.pid} on {t.waiting_on}" for t in blocked[:8])
                # now_ns only moves at hand-offs; the last task may have run past it.
                at = max(self.now_ns, max(c.local_ns for c in self.cpus))
                raise SimulationError(
                    f"simulation stuck at {at} ns: every task is blocked ({detail})"
                )
            self._driver_waiting = True

            def abort(_: Any) -> trio.lowlevel.Abort:
                self._driver_waiting = False
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        self.finished = True
