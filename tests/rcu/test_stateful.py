"""A hypothesis state machine over a small simulated kernel: RCU's promises under any schedule.

The kernel runs in a Trio run of its own on a helper thread (MockClock, so virtual time only
moves when a rule drives the simulation); each rule runs simulated tasks to completion through
``trio.from_thread``. Readers are long-lived kthreads that take and leave a read-side section
when told, so a section spans any number of rules; the build is ``CONFIG_PREEMPT_RCU``, where a
reader that blocks inside its section is a (legal) preempted reader that every later grace
period waits for.

Invariants: nothing queued while a reader was inside is freed (or reused) before that reader
leaves; no double free (the slab raises, the run would crash); after a barrier everything
queued is freed and every callback ran exactly once; kvfree_rcu's counters add up
(queued = freed + pending).
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule
from simtools import MS
from torture_broken import boot_broken

from rcukit.errors import MemoryDebugError
from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.rcu.segcblist import RcuHead
from rcukit.sched.sim import Task, WaitQueue
from rcukit.sim import KernelConfig, boot

NR_CPUS = 4
NR_READERS = 3
_GFP_KERNEL = int(GFP_KERNEL)


class KernelThread:
    """A booted kernel in a Trio run on another thread; :meth:`run` drives one simulated task."""

    def __init__(self, cfg: KernelConfig, broken: bool = False) -> None:
        self._broken = broken
        self._boot: queue.Queue[tuple[trio.lowlevel.TrioToken, Kernel, trio.Event]] = (
            queue.Queue()
        )
        self.crash: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(cfg,), daemon=True)
        self._thread.start()
        self.token, self.k, self._stop = self._boot.get(timeout=30)

    def _main(self, cfg: KernelConfig) -> None:
        async def main() -> None:
            async with boot_broken(cfg) if self._broken else boot(cfg) as k:
                stop = trio.Event()
                self._boot.put((trio.lowlevel.current_trio_token(), k, stop))
                await stop.wait()

        try:
            trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
        except BaseException as exc:  # surfaced by run()
            self.crash = exc

    def run(self, fn: Callable[[Task], Awaitable[object]], cpu: int = 0) -> object:
        async def go() -> object:
            t = self.k.spawn(fn, cpu, getattr(fn, "__name__", "rule"))
            await self.k.run()
            return t.result

        try:
            return trio.from_thread.run(go, trio_token=self.token)
        except BaseException:
            self._thread.join(10)
            if self.crash is not None:
                raise self.crash from None
            raise

    def close(self) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            trio.from_thread.run_sync(self._stop.set, trio_token=self.token)
        self._thread.join(10)


class _Cb(RcuHead):
    __slots__ = ("inside", "ptr", "runs")

    def __init__(self, ptr: int, inside: list[tuple[int, int]]) -> None:
        super().__init__(None)
        self.ptr = ptr
        self.inside = inside
        self.runs = 0


class RcuMachine(RuleBasedStateMachine):
    #: Boot the torture test's broken build (grace periods that end a reader early).
    broken = False
    #: v6.3: a krwp whose batch is in flight takes no new objects (``need_wait_for_krwp_work``).
    profile = "v6.3"
    #: CONFIG_DEBUG_OBJECTS_RCU_HEAD-style per-object checks.
    debug_objects = True

    def __init__(self) -> None:
        super().__init__()
        cfg = KernelConfig().replace(**{
            "nr_cpus": NR_CPUS,
            "preempt_rcu": True,
            "mm.zone_pages": 16_384,
            "mm.fail_page_alloc_probability": 1.0,
            "mm.fail_page_alloc_times": 0,  # the toggle rule arms it
            "kvfree.debug_objects": self.debug_objects,
            "kvfree.profile": self.profile,
        })
        self.kt = KernelThread(cfg, self.broken)
        self.k = self.kt.k
        self.faults = False
        self.inside = [False] * NR_READERS
        self.epoch = [0] * NR_READERS
        #: Objects queued while reader i was inside in its current epoch.
        self.protected: list[list[int]] = [[] for _ in range(NR_READERS)]
        self.kv_queued: set[int] = set()
        self.kv_calls = 0
        self.cbs: list[_Cb] = []
        self.violations: list[str] = []
        self.readers: list[tuple[deque[str], WaitQueue]] = []
        for i in range(NR_READERS):
            cmds: deque[str] = deque()
            wq = WaitQueue(f"reader{i}")
            self.readers.append((cmds, wq))
            self._spawn_reader(i, cmds, wq)

    def _spawn_reader(self, i: int, cmds: deque[str], wq: WaitQueue) -> None:
        rcu = self.k.rcu

        async def reader(task: Task) -> None:
            while True:
                while not cmds:
                    await task.block(wq, "reader_cmd")
                cmd = cmds.popleft()
                if cmd == "enter":
                    rcu.rcu_read_lock(task)
                    self.inside[i] = True
                    self.epoch[i] += 1
                    self.protected[i] = []
                elif cmd == "exit":
                    self.inside[i] = False
                    self.protected[i] = []
                    rcu.rcu_read_unlock(task)
                else:
                    return

        async def spawn(task: Task) -> None:
            self.k.spawn(reader, i % NR_CPUS, f"reader{i}", workload=False)

        self.kt.run(spawn)

    def _tell(self, i: int, cmd: str) -> None:
        cmds, wq = self.readers[i]

        async def poke(task: Task) -> None:
            await task.sync()
            cmds.append(cmd)
            wq.wake_one(task.now_ns)
            await task.sleep_ns(10_000)  # the reader acts before this returns

        self.kt.run(poke)
        assert not cmds, f"reader {i} did not take {cmd!r}"

    def _live(self, ptr: int) -> bool:
        try:
            self.k.mm.check_access(ptr)
        except MemoryDebugError:
            return False
        return True

    def _inside_now(self) -> list[tuple[int, int]]:
        return [(i, self.epoch[i]) for i in range(NR_READERS) if self.inside[i]]

    def _new_object(self, ptr: int) -> None:
        for i in range(NR_READERS):
            if self.inside[i] and ptr in self.protected[i]:
                self.violations.append(f"{ptr:#x} reused while reader {i} still holds it")
        self.kv_queued.discard(ptr)
        for i, _ in self._inside_now():
            self.protected[i].append(ptr)

    # ------------------------------------------------------------------------------- rules

    @rule(i=st.integers(0, NR_READERS - 1))
    def reader_enter(self, i: int) -> None:
        if not self.inside[i]:
            self._tell(i, "enter")
            assert self.inside[i]

    @rule(i=st.integers(0, NR_READERS - 1))
    def reader_exit(self, i: int) -> None:
        if self.inside[i]:
            self._tell(i, "exit")
            assert not self.inside[i]

    @rule(
        vmalloc=st.booleans(),
        two_arg=st.booleans(),
        n=st.integers(1, 40),
        cpu=st.integers(0, NR_CPUS - 1),
    )
    def kvfree(self, vmalloc: bool, two_arg: bool, n: int, cpu: int) -> None:
        if not two_arg and self.faults and any(self.inside):
            two_arg = True  # a head-less fallback would wait for a reader the rules hold
        k = self.k
        queued: list[int] = []

        async def go(task: Task) -> None:
            for _ in range(n if not vmalloc else min(n, 4)):
                if vmalloc:
                    p = await k.mm.vmalloc(task, 8192)
                else:
                    p = await k.mm.kmalloc(task, 64, _GFP_KERNEL)
                if not p:
                    continue  # allocation failed (fault injection)
                self._new_object(p)
                await k.kvfree.kvfree_rcu(task, p, p + 8 if two_arg else None)
                queued.append(p)

        self.kt.run(go, cpu)
        self.kv_queued.update(queued)
        self.kv_calls += len(queued)

    @rule(n=st.integers(1, 20), cpu=st.integers(0, NR_CPUS - 1))
    def call_rcu(self, n: int, cpu: int) -> None:
        k = self.k
        epoch = self.epoch

        def cb(task: Task, head: RcuHead) -> Any:
            assert isinstance(head, _Cb)
            head.runs += 1
            for i, e in head.inside:
                if self.inside[i] and epoch[i] == e:
                    self.violations.append(f"callback ran while reader {i} still inside")
            return k.mm.kfree(task, head.ptr)

        async def go(task: Task) -> None:
            for _ in range(n):
                p = await k.mm.kmalloc(task, 48, _GFP_KERNEL)
                if not p:
                    continue
                self._new_object(p)
                c = _Cb(p, self._inside_now())
                self.cbs.append(c)
                k.rcu.call_rcu(task, c, cb)

        self.kt.run(go, cpu)

    @precondition(lambda self: not any(self.inside))
    @rule(cpu=st.integers(0, NR_CPUS - 1))
    def synchronize(self, cpu: int) -> None:
        async def go(task: Task) -> None:
            await self.k.rcu.synchronize_rcu(task)

        self.kt.run(go, cpu)

    @precondition(lambda self: not any(self.inside))
    @rule()
    def barrier(self) -> None:
        k = self.k

        async def go(task: Task) -> None:
            await k.kvfree.kvfree_rcu_barrier(task)
            await k.rcu.rcu_barrier(task)

        self.kt.run(go)
        stale = [p for p in self.kv_queued if self._live(p)]
        assert not stale, f"{len(stale)} objects not freed after kvfree_rcu_barrier()"
        assert all(c.runs == 1 for c in self.cbs), "a callback did not run exactly once"
        assert all(not self._live(c.ptr) for c in self.cbs)
        st_ = k.kvfree.statistics()
        assert st_.pending == 0 and st_.objects_freed == self.kv_calls

    @rule(cpu=st.integers(1, NR_CPUS - 1))
    def hotplug(self, cpu: int) -> None:
        rcu = self.k.rcu

        async def go(task: Task) -> None:
            await task.sync()
            if self.k.cpus[cpu].online:
                await rcu.cpu_down(task, cpu)
            else:
                await rcu.cpu_up(task, cpu)

        self.kt.run(go, 0)

    @rule()
    def toggle_page_alloc_failure(self) -> None:
        self.faults = not self.faults
        self.k.mm.fail_page_alloc.times = -1 if self.faults else 0

    @rule(ms=st.integers(1, 30))
    def advance_time(self, ms: int) -> None:
        async def go(task: Task) -> None:
            await task.sleep_ns(ms * MS)

        self.kt.run(go)

    # ------------------------------------------------------------------------------- invariants

    @invariant()
    def no_free_before_its_grace_period(self) -> None:
        assert not self.violations, self.violations[0]
        for i in range(NR_READERS):
            if self.inside[i]:
                freed = [p for p in self.protected[i] if not self._live(p)]
                assert not freed, f"freed while reader {i} was inside: {freed[:3]}"

    @invariant()
    def counters_are_consistent(self) -> None:
        s = self.k.kvfree.statistics()
        assert s.calls == self.kv_calls
        assert s.objects_freed + s.pending == s.calls
        assert s.gp_violations == 0
        assert all(c.runs <= 1 for c in self.cbs)

    def teardown(self) -> None:
        try:
            if self.kt.crash is None:
                for i in range(NR_READERS):
                    self.reader_exit(i)
                self.barrier()
        finally:
            self.kt.close()


RcuMachine.TestCase.settings = settings(
    max_examples=50,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestRcuMachine = RcuMachine.TestCase


class _BrokenMachine(RcuMachine):
    broken = True


class _V59Machine(RcuMachine):
    profile = "v5.9"


class _V59NoDebugMachine(_V59Machine):
    debug_objects = False


def _replay_krwp_reuse(m: RcuMachine) -> int:
    try:
        m.reader_enter(0)  # holds the first batch's grace period open
        m.kvfree(True, False, 1, 0)
        m.advance_time(20)  # the monitor hands the vmalloc block to krw[0]
        m.kvfree(False, False, 1, 0)
        m.advance_time(20)  # the slab block joins krw[0], whose GP started before it
        m.reader_exit(0)
        m.advance_time(5)
        return m.k.kvfree.statistics().gp_violations
    finally:
        m.kt.close()


def test_the_invariants_rediscover_the_pre_v6_3_krwp_reuse_bug() -> None:
    """Hypothesis found this on v5.9 ("Avoid freeing new kfree_rcu() memory after old grace
    period", 5da7cb193db3, mainline in 6.3-rc6 and backported to stable): the monitor adds a
    new block to a krwp whose batch is still waiting for an older grace period, so the new
    object is freed after the old GP."""
    assert _replay_krwp_reuse(_V59Machine()) == 1


def test_the_reclaim_counts_the_krwp_reuse_without_debug_objects() -> None:
    """The same bug (kernel/rcu/tree.c kvfree_rcu_queue_batch before 6.3) seen without
    CONFIG_DEBUG_OBJECTS_RCU_HEAD: the reclaim finds the channel's detach-time snapshot
    (get_state_synchronize_rcu) not yet completed, so compare can show it on any profile."""
    assert _replay_krwp_reuse(_V59NoDebugMachine()) == 1


def test_the_invariants_catch_a_grace_period_that_ends_a_reader_early() -> None:
    m = _BrokenMachine()
    try:
        m.reader_enter(0)
        m.call_rcu(5, 1)
        m.kvfree(False, True, 5, 2)
        m.advance_time(30)
        try:
            m.no_free_before_its_grace_period()
        except AssertionError as exc:
            assert "while reader 0" in str(exc)
        else:
            raise AssertionError("the broken grace period went unnoticed")
    finally:
        m.kt.close()
