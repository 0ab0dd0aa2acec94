"""The lock model: lockdep's wait-context check and PREEMPT_RT's sleeping spinlocks.

The issue's "done means" test: boot a 4-CPU kernel under each build (default, lockdep =
PROVE_RAW_LOCK_NESTING, rt = PREEMPT_RT), have every CPU take locks in a given order, and get
exactly the splats the kernel would, deterministically, in the kernel's text format
(reference/kernel.md section 7).

The lock model runs lockdep's wait-type check in every build, as a PROVE_LOCKING kernel does; the
builds differ in the numbering (without PROVE_RAW_LOCK_NESTING, LD_WAIT_CONFIG == LD_WAIT_SPIN,
so SPIN 2, SLEEP 3, MAX 4) and in whether spinlock_t sleeps. So a mutex under a raw spinlock is an
``Invalid wait context`` in every build (kernel.md's 5.8-rc3 example shows exactly that with the
option off: a mutex ``-{3:3}`` under ``context-{4:4}``).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st
from simtools import FakeLockContext

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.errors import ConfigError, LockUsageError, SplatError
from rcukit.kernel import Kernel
from rcukit.locking import SPLAT_KINDS, Lock, LockKind, Splat, WaitType
from rcukit.locking.checker import LockChecker, rt_spin_lock_file_line
from rcukit.locking.splat import print_tainted, text_addr
from rcukit.panic import symbol_frame
from rcukit.sched import Task

BUILDS = ("default", "lockdep", "rt")
NR_CPUS = 4

IWC = "invalid_wait_context"
SWA = "scheduling_while_atomic"
SLP = "sleeping_in_atomic"


@attrs.define
class Locks:
    raw: Lock
    raw2: Lock
    spin: Lock
    spin2: Lock
    mutex: Lock


Body = Callable[[Kernel, Locks, Task], Awaitable[object]]


@attrs.define
class Run:
    kernel: Kernel
    locks: Locks
    tasks: list[Task]

    @property
    def counts(self) -> dict[str, int]:
        return self.kernel.splat_counts()

    @property
    def splats(self) -> list[Splat]:
        return self.kernel.locks.splats


def run_locks(build: str, body: Body, nr_cpus: int = NR_CPUS, **overrides: Any) -> Run:
    """Boot a kernel of the named build and run ``body`` as task ``lk<cpu>`` on every CPU."""
    cfg = KernelConfig(nr_cpus=nr_cpus).with_kernel_config(build)
    if overrides:
        cfg = cfg.replace(**overrides)
    box: dict[str, Run] = {}

    async def main() -> None:
        async with rcukit.sim.boot(cfg) as k:
            locks = Locks(
                raw=k.new_lock("krc.lock", LockKind.RAW_SPINLOCK),
                raw2=k.new_lock("&pool->lock", LockKind.RAW_SPINLOCK),
                spin=k.new_lock("&zone->lock", LockKind.SPINLOCK),
                spin2=k.new_lock("&n->list_lock", LockKind.SPINLOCK),
                mutex=k.new_lock("&rcu_state.barrier_mutex", LockKind.MUTEX),
            )

            def make(cpu: int) -> Callable[[Task], Awaitable[object]]:
                async def fn(task: Task) -> object:
                    await task.sync()
                    return await body(k, locks, task)

                return fn

            tasks = [k.spawn(make(c), c, f"lk{c}") for c in range(nr_cpus)]
            await k.run()
            box["run"] = Run(k, locks, tasks)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box["run"]


def expect(**counts: int) -> dict[str, int]:
    out = dict.fromkeys(SPLAT_KINDS, 0)
    out.update(counts)
    return out


# -- the lock orders -----------------------------------------------------------------------------


async def raw_then_spin(k: Kernel, L: Locks, t: Task) -> None:
    k.locks.acquire(t, L.raw, "kvfree_call_rcu", irqsave=True)
    k.locks.acquire(t, L.spin, "rmqueue_bulk")
    t.charge(100)
    k.locks.release(t, L.spin)
    k.locks.release(t, L.raw)


async def spin_then_raw(k: Kernel, L: Locks, t: Task) -> None:
    with k.locks.locked(t, L.spin, "free_pcppages_bulk"), k.locks.locked(t, L.raw, "irq_work"):
        t.charge(100)


async def raw_then_raw(k: Kernel, L: Locks, t: Task) -> None:
    with k.locks.locked(t, L.raw, "a", irqsave=True), k.locks.locked(t, L.raw2, "b"):
        t.charge(100)


async def spin_then_spin(k: Kernel, L: Locks, t: Task) -> None:
    with k.locks.locked(t, L.spin, "a", irqsave=True), k.locks.locked(t, L.spin2, "b"):
        t.charge(100)


async def raw_then_mutex(k: Kernel, L: Locks, t: Task) -> None:
    k.locks.acquire(t, L.raw, "kvfree_call_rcu")
    k.locks.acquire(t, L.mutex, "rcu_barrier")
    k.locks.release(t, L.mutex)
    k.locks.release(t, L.raw)


async def mutex_then_spin(k: Kernel, L: Locks, t: Task) -> None:
    with (
        k.locks.locked(t, L.mutex, "rcu_barrier"),
        k.locks.locked(t, L.spin, "rmqueue", irqsave=True),
    ):
        t.charge(100)


async def irqsave_then_spin(k: Kernel, L: Locks, t: Task) -> None:
    with k.locks.irq_disabled(t), k.locks.locked(t, L.spin, "rmqueue_bulk"):
        t.charge(100)


async def softirq_then_mutex(k: Kernel, L: Locks, t: Task) -> None:
    with t.softirq(), k.locks.locked(t, L.mutex, "rcu_barrier"):
        t.charge(100)


async def hardirq_then_spin(k: Kernel, L: Locks, t: Task) -> None:
    with t.hardirq(), k.locks.locked(t, L.spin, "rmqueue_bulk"):
        t.charge(100)


async def hardirq_then_raw(k: Kernel, L: Locks, t: Task) -> None:
    with t.hardirq(), k.locks.locked(t, L.raw, "krc_this_cpu_lock"):
        t.charge(100)


async def might_sleep_under_raw(k: Kernel, L: Locks, t: Task) -> None:
    with k.locks.locked(t, L.raw, "kvfree_call_rcu", irqsave=True):
        k.locks.might_sleep(t, "synchronize_rcu")


N = NR_CPUS
MATRIX: dict[str, tuple[Body, dict[str, dict[str, int]]]] = {
    # On RT rt_spin_lock()'s might-sleep check fires on every CPU; the raw lock serializes the
    # CPUs, so the spinlock_t is never contended and nobody schedules (no "scheduling while
    # atomic": kernel.md 8.3).
    "raw->spinlock_t": (
        raw_then_spin,
        {"default": expect(), "lockdep": expect(**{IWC: N}), "rt": expect(**{SLP: N})},
    ),
    "spinlock_t->raw": (spin_then_raw, dict.fromkeys(BUILDS, expect())),
    "raw->raw": (raw_then_raw, dict.fromkeys(BUILDS, expect())),
    "spinlock_t->spinlock_t": (spin_then_spin, dict.fromkeys(BUILDS, expect())),
    "raw->mutex": (raw_then_mutex, dict.fromkeys(BUILDS, expect(**{IWC: N, SLP: N}))),
    "mutex->spinlock_t": (mutex_then_spin, dict.fromkeys(BUILDS, expect())),
    "irq_save->spinlock_t": (
        irqsave_then_spin,
        # lockdep does not track plain irq-off for wait contexts; rt_spin_lock()'s might-sleep
        # check does. CPUs 1-3 find the lock taken and block, but with preemption on
        # (in_atomic_preempt_off() is false) schedule() does not call __schedule_bug().
        {"default": expect(), "lockdep": expect(), "rt": expect(**{SLP: N})},
    ),
    "softirq->mutex": (softirq_then_mutex, dict.fromkeys(BUILDS, expect(**{IWC: N, SLP: N}))),
    # In a hardirq preempt_count() has HARDIRQ_OFFSET: CPUs 1-3 block on the taken lock, so
    # they also schedule while atomic.
    "hardirq->spinlock_t": (
        hardirq_then_spin,
        {
            "default": expect(),
            "lockdep": expect(**{IWC: N}),
            "rt": expect(**{SLP: N, SWA: N - 1}),
        },
    ),
    "hardirq->raw": (hardirq_then_raw, dict.fromkeys(BUILDS, expect())),
    "might_sleep under raw": (might_sleep_under_raw, dict.fromkeys(BUILDS, expect(**{SLP: N}))),
}


@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("order", list(MATRIX))
def test_lock_order_matrix(order: str, build: str) -> None:
    body, expected = MATRIX[order]
    run = run_locks(build, body)
    assert run.counts == expected[build]
    # Kept once per call site and kind, however many CPUs hit it.
    assert len(run.splats) == sum(1 for v in expected[build].values() if v)
    # CPU 0 meets each problem first, except blocking on the taken lock: CPU 0 finds it free.
    assert {s.cpu for s in run.splats if s.kind != SWA} <= {0}
    assert {s.cpu for s in run.splats if s.kind == SWA} <= {1}
    # Every task ends with its context restored and every lock free.
    for t in run.tasks:
        assert (t.preempt_count, t.irqs_disabled, t.in_hardirq, t.in_softirq) == (0, 0, 0, 0)
        assert t.held_locks == []
    for lock in attrs.astuple(run.locks, recurse=False):
        assert lock.owner is None


@pytest.mark.parametrize("build", BUILDS)
def test_matrix_is_deterministic(build: str) -> None:
    a = run_locks(build, raw_then_mutex)
    b = run_locks(build, raw_then_mutex)
    assert [s.format() for s in a.splats] == [s.format() for s in b.splats]
    assert [attrs.asdict(s) for s in a.splats] == [attrs.asdict(s) for s in b.splats]
    assert a.counts == b.counts


# -- the splat text ------------------------------------------------------------------------------

SITE_RE = re.compile(r"^test_locking\.py:\d+$")
#: print_tainted() with TAINT_WARN set, 18 flag columns (5.9 to 5.19).
TAINTED_5 = "Tainted: G        W        "


#: The frames between ``dump_stack()`` and the caller, per report: lockdep's
#: ``print_lock_invalid_wait_context()`` runs from ``__lock_acquire()`` under ``lock_acquire()``
#: (kernel/locking/lockdep.c); ``__schedule_bug()`` from ``__schedule()`` under ``schedule()``
#: (kernel/sched/core.c); the might-sleep report is ``___might_sleep()`` (5.9) /
#: ``__might_resched()`` (5.17+), under ``rt_spin_lock()`` for an RT spinlock.
_REPORTERS = {
    "invalid_wait_context": ["__lock_acquire", "lock_acquire"],
    "scheduling_while_atomic": ["__schedule_bug", "__schedule", "schedule"],
}


def _trailer(
    s: Splat, ip: str, taint: str = "Not tainted", release: str = "5.9.0-rcukit"
) -> list[str]:
    """``dump_stack()``: the info line, then the call trace one kernel symbol per line (the
    Python site is no part of the text, so edits to the model never change a report)."""
    might = "__might_resched" if s.version >= (5, 17) else "___might_sleep"
    rt = ["rt_spin_lock"] if s.file_line.startswith("kernel/locking/") else []
    frames = [
        "dump_stack_lvl" if s.version >= (5, 14) else "dump_stack",
        *_REPORTERS.get(s.kind, [might, *rt]),
        ip,
    ]
    return [
        f"CPU: {s.cpu} PID: {s.pid} Comm: {s.comm} {taint} {release} #1",
        "Call Trace:",
        *(f" {symbol_frame(f)}" for f in frames),
    ]


def _one(run: Run, kind: str) -> Splat:
    [s] = [s for s in run.splats if s.kind == kind]
    return s


def _held(lock: Lock, wt: str, ip: str, i: int = 0) -> str:
    return f" #{i}: {lock.addr:016x} ({lock.name}){{....}}-{{{wt}}}, at: {symbol_frame(ip)}"


def _preempt_off_at(ip: str) -> list[str]:
    return ["Preemption disabled at:", f"[<{text_addr(ip)}>] {symbol_frame(ip)}"]


def test_invalid_wait_context_text_with_prove_raw_lock_nesting() -> None:
    """``print_lock_invalid_wait_context()`` (kernel/locking/lockdep.c, 5.7+ incl. 5.9): the
    banner, ``print_kernel_ident()``, the lock being taken, ``context-{%d:%d}`` (task context,
    twice), ``lockdep_print_held_locks()``, ``stack backtrace:`` and ``dump_stack()``."""
    run = run_locks("lockdep", raw_then_spin)
    s = run.splats[0]
    L = run.locks
    pid = run.tasks[0].pid
    assert (s.kind, s.cpu, s.comm, s.pid, s.lock_name, s.ip) == (
        IWC, 0, "lk0", pid, "&zone->lock", "rmqueue_bulk"
    )
    assert SITE_RE.match(s.site)
    assert s.title == "BUG: Invalid wait context"
    assert s.printed
    assert s.format().split("\n") == [
        "",
        "=============================",
        "[ BUG: Invalid wait context ]",
        "5.9.0-rcukit #1 Not tainted",
        "-----------------------------",
        f"lk0/{pid} is trying to lock:",
        f"{L.spin.addr:016x} (&zone->lock){{....}}-{{3:3}}, at: {symbol_frame('rmqueue_bulk')}",
        "other info that might help us debug this:",
        "context-{5:5}",
        f"1 lock held by lk0/{pid}:",
        _held(L.raw, "2:2", "kvfree_call_rcu"),
        "stack backtrace:",
        *_trailer(s, "rmqueue_bulk"),
    ]
    assert f"{L.raw.addr:016x}".startswith("ffff8880")


@pytest.mark.parametrize(
    ("build", "mutex_wt", "raw_wt", "ctx"),
    [
        ("lockdep", "4:4", "2:2", "5:5"),
        ("default", "3:3", "2:2", "4:4"),
        ("rt", "3:3", "2:2", "4:4"),
    ],
)
def test_invalid_wait_context_numbers_follow_prove_raw_lock_nesting(
    build: str, mutex_wt: str, raw_wt: str, ctx: str
) -> None:
    """A mutex under a raw lock: ``mutex_lock()`` runs ``might_sleep()`` first, then lockdep's
    ``mutex_acquire()`` (kernel/locking/mutex.c, 5.9), so the might-sleep report comes first.
    It is ``___might_sleep()``'s 5.9 text: no "preempt_count:"/"RCU nest depth:" lines (5.17
    added them), and with CONFIG_DEBUG_PREEMPT "Preemption disabled at:" and the ip on the next
    line (``print_ip_sym()``). It taints the kernel (TAINT_WARN), so lockdep's report printed
    after it says "Tainted: G        W" (``print_tainted()``, kernel/panic.c)."""
    run = run_locks(build, raw_then_mutex)
    slp, iwc = run.splats
    L = run.locks
    pid = run.tasks[0].pid
    assert (slp.kind, iwc.kind) == (SLP, IWC)
    lines = iwc.format().split("\n")
    assert lines[3] == f"5.9.0-rcukit #1 {TAINTED_5}"
    assert lines[5:11] == [
        f"lk0/{pid} is trying to lock:",
        f"{L.mutex.addr:016x} (&rcu_state.barrier_mutex){{....}}-{{{mutex_wt}}}"
        f", at: {symbol_frame('rcu_barrier')}",
        "other info that might help us debug this:",
        f"context-{{{ctx}}}",
        f"1 lock held by lk0/{pid}:",
        _held(L.raw, raw_wt, "kvfree_call_rcu"),
    ]
    assert f"CPU: 0 PID: {pid} Comm: lk0 {TAINTED_5} 5.9.0-rcukit #1" in lines
    # The mutex sleeps with preemption off (raw_spin_lock without irqsave: IRQs stay on).
    assert slp.format().split("\n") == [
        f"BUG: sleeping function called from invalid context at {slp.site}",
        f"in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: {pid}, name: lk0",
        f"1 lock held by lk0/{pid}:",
        _held(L.raw, raw_wt, "kvfree_call_rcu"),
        *_preempt_off_at("kvfree_call_rcu"),
        *_trailer(slp, "rcu_barrier"),
    ]
    assert slp.site == iwc.site


def test_wait_type_numbering() -> None:
    # kernel.md section 7: with the option SPIN 2, CONFIG 3, SLEEP 4, MAX 5; without it
    # CONFIG collapses onto SPIN: FREE 1, SPIN = CONFIG 2, SLEEP 3, MAX 4.
    with_opt = [int(w.effective(True)) for w in WaitType]
    without = [int(w.effective(False)) for w in WaitType]
    assert with_opt == [0, 1, 2, 3, 4, 5]
    assert without == [0, 1, 2, 2, 3, 4]
    assert LockKind.RCU.wait_outer is WaitType.FREE
    assert LockKind.RCU.wait_inner is WaitType.CONFIG


def test_softirq_mutex_text_has_no_locks_held() -> None:
    """A softirq is LD_WAIT_CONFIG (``task_wait_context()``, lockdep.c) and counts as
    SOFTIRQ_OFFSET (0x100) in ``preempt_count()`` (include/linux/preempt.h)."""
    run = run_locks("lockdep", softirq_then_mutex)
    s = _one(run, IWC)
    pid = run.tasks[0].pid
    lines = s.format().split("\n")
    assert lines[8:10] == ["context-{3:3}", f"no locks held by lk0/{pid}."]
    assert lines[6].endswith(
        f"(&rcu_state.barrier_mutex){{....}}-{{4:4}}, at: {symbol_frame('rcu_barrier')}"
    )
    assert _one(run, SLP).preempt_count == 0x100


def test_rt_spinlock_under_raw_text_5_9() -> None:
    """PREEMPT_RT, uncontended: the -rt patchset's ``rt_spin_lock()`` (5.9-rt) calls lockdep's
    ``spin_acquire()`` and then ``rt_spin_lock_fastlock()``, whose
    ``might_sleep_no_state_check()`` reports from kernel/locking/rtmutex.c (5.10-rt reports
    say line 969). The lock being taken is already in lockdep's held locks. No "scheduling
    while atomic": the rtmutex is free, nobody blocks (kernel.md 8.3; the old model printed it
    for every acquisition, with a "sleeping lock:" line no kernel prints)."""
    run = run_locks("rt", raw_then_spin)
    [s] = run.splats
    L = run.locks
    pid = run.tasks[0].pid
    assert s.title == "BUG: sleeping function called from invalid context"
    assert (s.preempt_count, s.irqs_disabled, s.printed) == (1, True, True)
    assert s.format().split("\n") == [
        "BUG: sleeping function called from invalid context at kernel/locking/rtmutex.c:969",
        f"in_atomic(): 1, irqs_disabled(): 1, non_block: 0, pid: {pid}, name: lk0",
        f"2 locks held by lk0/{pid}:",
        _held(L.raw, "2:2", "kvfree_call_rcu"),
        _held(L.spin, "2:2", "rmqueue_bulk", 1),
        *_preempt_off_at("kvfree_call_rcu"),
        *_trailer(s, "rmqueue_bulk"),
    ]
    assert "sleeping lock" not in s.format()
    # All four CPUs hit it at about the same time: one report per second is printed.
    stats = run.kernel.splat_statistics()
    assert (stats.sleeping_in_atomic, stats.reports_printed) == (N, 1)
    assert stats.first_report == s.format()


async def spin_raw_spin(k: Kernel, L: Locks, t: Task) -> None:
    with (
        k.locks.locked(t, L.spin2, "get_partial_node"),
        k.locks.locked(t, L.raw, "kvfree_call_rcu", irqsave=True),
        k.locks.locked(t, L.spin, "rmqueue_bulk"),
    ):
        t.charge(100)


@pytest.mark.parametrize(
    ("profile", "release", "file_line"),
    [("v6.1", "6.1.0-rcukit", "kernel/locking/spinlock_rt.c:46")],
)
def test_rt_spinlock_under_raw_text_6_x(profile: str, release: str, file_line: str) -> None:
    """5.17+ (``__might_resched()``, kernel/sched/core.c): after ``in_atomic()`` come
    "preempt_count: %x, expected: %x" and, with CONFIG_PREEMPT_RCU (forced by RT), "RCU nest
    depth: %d, expected: %u". ``rtlock_might_resched()`` (kernel/locking/spinlock_rt.c) expects
    the current RCU depth, because every RT spinlock holds an ``rcu_read_lock()`` (taken after
    the rtmutex in ``__rt_spin_lock()``), and lockdep lists it after the spinlock. 6.2-rt
    reports give the file line 46."""
    run = run_locks("rt", spin_raw_spin, nr_cpus=1, **{"kvfree.profile": profile})
    [s] = run.splats
    L = run.locks
    pid = run.tasks[0].pid
    assert s.format().split("\n") == [
        f"BUG: sleeping function called from invalid context at {file_line}",
        f"in_atomic(): 1, irqs_disabled(): 1, non_block: 0, pid: {pid}, name: lk0",
        "preempt_count: 1, expected: 0",
        "RCU nest depth: 1, expected: 1",
        f"4 locks held by lk0/{pid}:",
        _held(L.spin2, "2:2", "get_partial_node"),
        f" #1: {0xFFFFFFFF82B5C2E0:016x} (rcu_read_lock){{....}}-{{1:2}}, "
        f"at: {symbol_frame('rt_spin_lock')}",
        _held(L.raw, "2:2", "kvfree_call_rcu", 2),
        _held(L.spin, "2:2", "rmqueue_bulk", 3),
        *_preempt_off_at("kvfree_call_rcu"),
        *_trailer(s, "rmqueue_bulk", release=release),
    ]


@pytest.mark.parametrize(
    ("version", "file_line"),
    [
        ((5, 9), "kernel/locking/rtmutex.c:969"),
        ((5, 15), "kernel/locking/spinlock_rt.c:35"),
        ((5, 17), "kernel/locking/spinlock_rt.c:46"),
        ((6, 4), "kernel/locking/spinlock_rt.c:46"),
        ((6, 6), "kernel/locking/spinlock_rt.c:48"),
        ((6, 15), "kernel/locking/spinlock_rt.c:48"),
    ],
)
def test_rt_spin_lock_file_line_follows_the_kernel(
    version: tuple[int, int], file_line: str
) -> None:
    """Where ``rt_spin_lock()``'s check lives: the -rt patchset's rtmutex.c before 5.15
    (5.10-rt reports: rtmutex.c:969), spinlock_rt.c from 5.15 (``___might_sleep`` on line 35 in
    the 5.15 file), ``rtlock_might_resched()`` from 5.17 (line 46 in 5.17-rt and 6.2-rt
    reports), line 48 in 6.6.31 and later reports."""
    assert rt_spin_lock_file_line(version) == file_line


@pytest.mark.parametrize(
    ("version", "text"),
    [
        ((5, 9), "Tainted: G        W        "),
        ((5, 17), "Tainted: G        W        "),
        ((6, 1), "Tainted: G        W         "),
        ((6, 16), "Tainted: G        W          "),
    ],
)
def test_print_tainted_columns(version: tuple[int, int], text: str) -> None:
    """``print_tainted()`` (kernel/panic.c) prints one column per taint flag, 'G' for clear
    bit 0 and 'W' for TAINT_WARN (bit 9): 18 columns up to 5.19 (a 5.17 report: "Tainted: G
    W         5.17.0"), 19 with TAINT_TEST (6.0), 20 with TAINT_FWCTL (6.15; a 6.16-rc1 report:
    "Tainted: G        W           6.16.0")."""
    assert print_tainted(1 << 9, version) == text
    assert print_tainted(0, version) == "Not tainted"


def _contended_spin(hold_ns: int) -> Body:
    """CPU 1 takes the spinlock_t in task context at time 0 and holds it ``hold_ns``; CPU 0
    arrives at 500 ns holding a raw lock with IRQs off and takes the spinlock_t."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        if t.cpu.id == 1:
            with k.locks.locked(t, L.spin, "get_page_from_freelist"):
                t.charge(hold_ns)
            return
        t.charge(500)
        await t.sync()
        await raw_then_spin(k, L, t)

    return body


def test_rt_contended_spinlock_schedules_while_atomic() -> None:
    """PREEMPT_RT, contended: the might-sleep check fires first, then the rtmutex is taken by
    another task, ``rt_spin_lock_slowlock()`` blocks and ``schedule()`` ->
    ``schedule_debug()`` -> ``__schedule_bug()`` (kernel/sched/core.c, 5.9) prints "BUG:
    scheduling while atomic: %s/%d/0x%08x" with ``preempt_count()`` including schedule()'s own
    ``preempt_disable()`` (one raw lock: 0x00000002), the held locks (lockdep already has the
    lock being taken), "Modules linked in:", "Preemption disabled at:" (``in_atomic_preempt_off``)
    and the stack. The might-sleep report before it tainted the kernel (TAINT_WARN)."""
    run = run_locks("rt", _contended_spin(10_000), nr_cpus=2)
    assert run.counts == expect(**{SLP: 1, SWA: 1})
    slp, swa = run.splats
    L = run.locks
    pid = run.tasks[0].pid
    assert (slp.kind, swa.kind, swa.cpu, swa.time_ns) == (SLP, SWA, 0, 500)
    assert swa.format().split("\n") == [
        f"BUG: scheduling while atomic: lk0/{pid}/0x00000002",
        f"2 locks held by lk0/{pid}:",
        _held(L.raw, "2:2", "kvfree_call_rcu"),
        _held(L.spin, "2:2", "rmqueue_bulk", 1),
        "Modules linked in:",
        *_preempt_off_at("kvfree_call_rcu"),
        *_trailer(swa, "rmqueue_bulk", taint=TAINTED_5),
    ]
    # Both were printed: __schedule_bug() has no rate limit.
    stats = run.kernel.splat_statistics()
    assert (stats.reports_printed, stats.printed) == (2, {SLP: 1, SWA: 1})
    assert stats.first_report == slp.format()
    # CPU 0 waited for CPU 1's release.
    assert run.tasks[0].cpu.local_ns >= 10_000


def test_rt_uncontended_spinlock_does_not_schedule() -> None:
    """The same two CPUs, but CPU 1 releases the lock (at 100 ns) before CPU 0 arrives (500 ns):
    the rtmutex fast path takes it, only the might-sleep check reports (kernel.md 8.3)."""
    run = run_locks("rt", _contended_spin(100), nr_cpus=2)
    assert run.counts == expect(**{SLP: 1})
    assert run.locks.spin.contentions == 0


def test_rt_lock_owned_by_another_task_is_contended() -> None:
    """A lock whose owner still holds it (here across a scheduling point) is contended even if
    the owner's clock is behind: ``rt_mutex_cmpxchg_acquire()`` fails on any owner."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        if t.cpu.id == 1:
            k.locks.acquire(t, L.spin, "get_page_from_freelist")
            L.spin.free_at_ns = 0
            with k.locks.locked(t, L.raw, "kvfree_call_rcu", irqsave=True):
                owner = L.spin.owner
                L.spin.owner = object()  # another task holds it right now
                k.locks.acquire(t, L.spin2, "rmqueue_bulk")
                k.locks.release(t, L.spin2)
                L.spin2.owner = object()
                k.locks.acquire(t, L.spin2, "rmqueue_bulk")
                k.locks.release(t, L.spin2)
                L.spin.owner = owner
            k.locks.release(t, L.spin)

    run = run_locks("rt", body, nr_cpus=2)
    assert run.counts == expect(**{SLP: 2, SWA: 1})


def test_rt_without_debug_atomic_sleep() -> None:
    """Without CONFIG_DEBUG_ATOMIC_SLEEP there is no might-sleep check (``might_sleep()`` and
    ``___might_sleep()`` compile away, include/linux/kernel.h): an uncontended RT spinlock under a
    raw lock prints nothing; a contended one still schedules and ``__schedule_bug()`` (not under
    that option) reports it (kernel.md 8.3)."""
    quiet = run_locks("rt", _contended_spin(100), nr_cpus=2, debug_atomic_sleep=False)
    assert quiet.counts == expect()
    assert quiet.kernel.splat_statistics().first_report == ""
    loud = run_locks("rt", _contended_spin(10_000), nr_cpus=2, debug_atomic_sleep=False)
    assert loud.counts == expect(**{SWA: 1})
    [swa] = loud.splats
    assert any(line.endswith(" Not tainted 5.9.0-rcukit #1")
               for line in swa.format().split("\n"))


def test_splat_json() -> None:
    run = run_locks("rt", raw_then_spin)
    s = run.splats[0]
    assert s.to_json() == {
        "kind": SLP,
        "cpu": 0,
        "comm": "lk0",
        "pid": run.tasks[0].pid,
        "time_ns": s.time_ns,
        "lock": "&zone->lock",
        "ip": "rmqueue_bulk",
        "site": s.site,
        "held": ["krc.lock", "&zone->lock"],
        "printed": True,
    }


# -- context bookkeeping -------------------------------------------------------------------------


@pytest.mark.parametrize("build", BUILDS)
def test_in_atomic_bookkeeping(build: str) -> None:
    rt = build == "rt"

    async def body(k: Kernel, L: Locks, t: Task) -> list[tuple[int, int, bool]]:
        seen: list[tuple[int, int, bool]] = []

        def snap() -> None:
            seen.append((t.preempt_count, t.irqs_disabled, t.in_atomic()))

        k.locks.acquire(t, L.raw, "raw_irqsave", irqsave=True)
        snap()
        assert L.raw.owner is t
        k.locks.release(t, L.raw)
        snap()
        assert L.raw.owner is None
        k.locks.acquire(t, L.raw, "raw_plain")
        snap()
        k.locks.release(t, L.raw)
        k.locks.acquire(t, L.spin, "spin_irqsave", irqsave=True)
        snap()
        k.locks.release(t, L.spin)
        k.locks.acquire(t, L.mutex, "mutex")
        snap()
        k.locks.release(t, L.mutex)
        # Nested, released out of order (allowed, as in the kernel).
        k.locks.acquire(t, L.raw, "n1", irqsave=True)
        k.locks.acquire(t, L.raw2, "n2")
        snap()
        k.locks.release(t, L.raw)
        snap()
        k.locks.release(t, L.raw2)
        snap()
        with k.locks.irq_disabled(t):
            snap()
        with t.hardirq():
            seen.append((t.in_hardirq, t.irqs_disabled, t.in_atomic()))
        with t.softirq():
            seen.append((t.in_softirq, t.preempt_count, t.in_atomic()))
        snap()
        # A context manager restores the context even when the body raises.
        with pytest.raises(KeyError), k.locks.locked(t, L.raw, "raises", irqsave=True):
            raise KeyError("x")
        snap()
        return seen

    run = run_locks(build, body, nr_cpus=1)
    assert run.tasks[0].result == [
        (1, 1, True),  # raw_spin_lock_irqsave
        (0, 0, False),  # restored
        (1, 0, True),  # raw_spin_lock
        # spinlock_t on RT is an rt_mutex: no preempt_count, and _irqsave leaves IRQs on.
        (0, 0, False) if rt else (1, 1, True),
        (0, 0, False),  # mutex
        (2, 1, True),  # two raw locks, the outer with irqsave
        (1, 0, True),  # outer released first: its irqsave goes with it
        (0, 0, False),
        (0, 1, True),  # local_irq_save
        (1, 1, True),  # hardirq: in_hardirq, IRQs off
        (1, 1, True),  # softirq: in_softirq, preempt_count
        (0, 0, False),
        (0, 0, False),  # after the body of locked() raised
    ]
    assert run.counts == expect()


def test_rt_spinlock_held_entry_records_no_preempt_or_irqsave() -> None:
    async def body(k: Kernel, L: Locks, t: Task) -> tuple[bool, bool, bool, bool]:
        k.locks.acquire(t, L.spin, "rmqueue", irqsave=True)
        k.locks.acquire(t, L.raw, "inner")
        h_spin, h_raw = t.held_locks
        out = (h_spin.preempt, h_spin.irqsave, h_raw.preempt, h_raw.irqsave)
        k.locks.release(t, L.raw)
        k.locks.release(t, L.spin)
        return out

    assert run_locks("rt", body, nr_cpus=1).tasks[0].result == (False, False, True, False)
    assert run_locks("default", body, nr_cpus=1).tasks[0].result == (True, True, True, False)


# -- reporting policy ----------------------------------------------------------------------------


def test_lockdep_reports_once_per_boot(capsys: pytest.CaptureFixture[str]) -> None:
    """lockdep is one-shot: ``print_lock_invalid_wait_context()`` (kernel/locking/lockdep.c,
    5.7 to 6.x) begins with ``if (!debug_locks_off()) return 0;``, so the first report clears
    ``debug_locks`` and nothing of lockdep's prints again for the rest of the boot (kernel.md
    8.4). The old model printed once per call site ("2 x Invalid wait context" here), which no
    kernel does. No "turning off the locking correctness validator." line: lockdep prints that
    only for its internal limits (MAX_LOCKDEP_KEYS too low, non-static key), not here.
    Every violation is still counted ("would report"), and kept once per call site."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        for _ in range(3):
            with k.locks.locked(t, L.raw, "kvfree_call_rcu", irqsave=True):
                k.locks.acquire(t, L.spin, "rmqueue_bulk")  # site A
                k.locks.release(t, L.spin)
        with k.locks.locked(t, L.raw, "kvfree_call_rcu", irqsave=True):
            k.locks.acquire(t, L.spin, "rmqueue_bulk")  # site B: same lock and ip, other line
            k.locks.release(t, L.spin)

    run = run_locks("lockdep", body, print_splats=True)
    err = capsys.readouterr().err
    # Counted every time: 4 CPUs x 4 acquisitions; printed once.
    assert run.counts == expect(**{IWC: 16})
    assert err.count("[ BUG: Invalid wait context ]") == 1
    assert "turning off the locking correctness validator" not in err
    checker = run.kernel.locks
    assert not checker.debug_locks
    assert len(run.splats) == 2 and checker.unique_sites() == 2
    assert [s.printed for s in run.splats] == [True, False]
    assert run.splats[0].site != run.splats[1].site
    assert err == run.splats[0].format() + "\n"
    stats = run.kernel.splat_statistics()
    assert stats.to_json() == {
        "sleeping_in_atomic": 0,
        "scheduling_while_atomic": 0,
        "invalid_wait_context": 16,
        "reports_printed": 1,
        "first_report": run.splats[0].format(),
        "printed": {IWC: 1},
    }
    # The kernel also counts splats the /proc/vmstat way (every violation).
    assert run.kernel.vmstat["splat_invalid_wait_context"] == 16


def test_might_sleep_is_rate_limited_to_one_per_second() -> None:
    """``___might_sleep()`` (5.9) and ``__might_resched()`` (5.17+), kernel/sched/core.c:
    ``if (time_before(jiffies, prev_jiffy + HZ) && prev_jiffy) return; prev_jiffy = jiffies;``
    one static ``prev_jiffy`` for every caller: at most one report per second."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        for gap_ms in (0, 500, 500, 1500, 10):
            t.charge(gap_ms * 1_000_000)
            await might_sleep_under_raw(k, L, t)

    run = run_locks("default", body, nr_cpus=1)
    # At 0 ms, 500 ms, 1000 ms, 2500 ms, 2510 ms: printed at 0, 1000 and 2500.
    assert run.counts == expect(**{SLP: 5})
    stats = run.kernel.splat_statistics()
    assert stats.printed == {SLP: 3}
    printed = run.kernel.locks.printed_reports
    assert [s.time_ns // 1_000_000 for s in printed] == [0, 1000, 2500]
    # Each printed one tainted the kernel (add_taint(TAINT_WARN, ...)) for the next.
    assert [s.taint for s in printed] == [0, 1 << 9, 1 << 9]


def test_might_sleep_after_lockdep_turned_off() -> None:
    """Once lockdep has reported, ``debug_show_held_locks()`` (kernel/locking/lockdep.c) prints
    "INFO: lockdep is turned off." instead of the held locks, as in posted 5.4-6.6 reports."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        await raw_then_spin(k, L, t)
        t.charge(2_000_000_000)
        await might_sleep_under_raw(k, L, t)

    run = run_locks("lockdep", body, nr_cpus=1)
    iwc, slp = run.splats
    assert (iwc.printed, slp.printed, slp.lockdep_off) == (True, True, True)
    assert slp.format().split("\n")[2] == "INFO: lockdep is turned off."


def test_nothing_printed_unless_asked(capsys: pytest.CaptureFixture[str]) -> None:
    run = run_locks("lockdep", raw_then_spin)
    assert run.counts[IWC] == N
    assert capsys.readouterr().err == ""


def test_strict_mode_raises_and_state_stays_usable() -> None:
    async def body(k: Kernel, L: Locks, t: Task) -> list[object]:
        out: list[object] = []
        k.locks.acquire(t, L.raw, "kvfree_call_rcu", irqsave=True)
        with pytest.raises(SplatError) as exc:
            k.locks.acquire(t, L.spin, "rmqueue_bulk")
        splat = exc.value.splat
        assert isinstance(splat, Splat)
        out.append((splat.kind, splat.lock_name))
        assert "[ BUG: Invalid wait context ]" in str(exc.value)
        # The refused lock was not taken; the held one still is.
        out.append(([h.lock.name for h in t.held_locks], L.spin.owner, L.spin.acquisitions))
        k.locks.release(t, L.raw)
        out.append((t.preempt_count, t.irqs_disabled))
        # The same lock is fine in a valid context, and strict mode raises every time.
        with k.locks.locked(t, L.spin, "rmqueue_bulk"):
            t.charge(10)
        with k.locks.locked(t, L.raw, "kvfree_call_rcu"), pytest.raises(SplatError):
            k.locks.acquire(t, L.spin, "rmqueue_bulk")
        out.append((t.preempt_count, t.irqs_disabled, L.spin.acquisitions))
        return out

    run = run_locks("lockdep", body, strict_splats=True)
    for t in run.tasks:
        assert t.result == [
            (IWC, "&zone->lock"),
            (["krc.lock"], None, 0 if t.cpu.id == 0 else t.cpu.id),
            (0, 0),
            (0, 0, t.cpu.id + 1),
        ]
    assert run.counts == expect(**{IWC: 8})


def test_strict_splat_uncaught_propagates() -> None:
    with pytest.raises(BaseException) as exc:
        run_locks("rt", raw_then_spin, strict_splats=True)
    err = exc.value
    while isinstance(err, BaseExceptionGroup) and len(err.exceptions) == 1:
        err = err.exceptions[0]
    assert isinstance(err, SplatError)
    # The first violation on RT is rt_spin_lock()'s might-sleep check (kernel.md 8.3).
    assert str(err).startswith("BUG: sleeping function called from invalid context at ")


def test_release_of_a_lock_not_held_is_an_error() -> None:
    async def body(k: Kernel, L: Locks, t: Task) -> str:
        with pytest.raises(LockUsageError) as exc:
            k.locks.release(t, L.spin)
        # Releasing twice is the same mistake.
        k.locks.acquire(t, L.raw, "x")
        k.locks.release(t, L.raw)
        with pytest.raises(RuntimeError):
            k.locks.release(t, L.raw)
        assert (t.preempt_count, t.irqs_disabled) == (0, 0)
        return str(exc.value)

    run = run_locks("default", body, nr_cpus=1)
    pid = run.tasks[0].pid
    assert run.tasks[0].result == f"lk0/{pid} releases &zone->lock (spinlock_t) it does not hold"


@pytest.mark.parametrize("build", BUILDS)
def test_contention_charges_wait_time(build: str) -> None:
    async def body(k: Kernel, L: Locks, t: Task) -> int:
        with k.locks.locked(t, L.raw, "krc_this_cpu_lock"):
            t.charge(1000)
        return t.now_ns

    run = run_locks(build, body)
    # All four arrive at time 0; each waits for the one before to release.
    assert [t.result for t in run.tasks] == [1000, 2000, 3000, 4000]
    raw = run.locks.raw
    assert (raw.acquisitions, raw.contentions, raw.wait_ns, raw.free_at_ns) == (4, 3, 6000, 4000)
    assert run.locks.spin.acquisitions == 0


def test_uncontended_lock_charges_no_wait() -> None:
    async def body(k: Kernel, L: Locks, t: Task) -> int:
        t.charge(5000 * t.cpu.id)
        await t.sync()
        with k.locks.locked(t, L.raw, "x"):
            t.charge(1000)
        return t.now_ns

    run = run_locks("default", body)
    assert [t.result for t in run.tasks] == [1000, 6000, 11000, 16000]
    assert (run.locks.raw.contentions, run.locks.raw.wait_ns) == (0, 0)


def test_might_sleep_in_an_rcu_reader_5_9() -> None:
    """5.9 ``___might_sleep()``: ``preempt_count_equals()`` adds ``rcu_preempt_depth()``, so a
    sleep in a preemptible RCU reader reports with ``in_atomic(): 0`` and, with
    CONFIG_DEBUG_PREEMPT, "Preemption disabled at:" and a stale ``preempt_disable_ip`` (0 here),
    the confusion 5.17's "sched: Make might_sleep() output less confusing" removed."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        t.rcu_read_nesting += 1  # what rcu_read_lock() does to the task
        k.locks.might_sleep(t, "synchronize_rcu")
        t.rcu_read_nesting -= 1
        k.locks.might_sleep(t, "synchronize_rcu")  # outside the reader: fine

    run = run_locks("default", body, nr_cpus=1, preempt_rcu=True)
    assert run.counts == expect(**{SLP: 1})
    lines = run.splats[0].format().split("\n")
    pid = run.tasks[0].pid
    assert lines[1:5] == [
        f"in_atomic(): 0, irqs_disabled(): 0, non_block: 0, pid: {pid}, name: lk0",
        f"no locks held by lk0/{pid}.",
        "Preemption disabled at:",
        "[<0000000000000000>] 0x0",
    ]


def test_might_sleep_in_an_rcu_reader_prints_the_nest_depth() -> None:
    """5.17+ ``__might_resched()`` (kernel/sched/core.c) prints "preempt_count: %x, expected:
    %x" and, with CONFIG_PREEMPT_RCU, "RCU nest depth: %d, expected: %u";
    ``resched_offsets_ok()`` counts the RCU depth in, so a sleep in a preemptible reader is
    reported with ``in_atomic(): 0``, and "Preemption disabled at:" is left out because
    ``preempt_count()`` equals the expected offset (``print_preempt_disable_ip()``)."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        t.rcu_read_nesting += 1
        k.locks.might_sleep(t, "synchronize_rcu")
        t.rcu_read_nesting -= 1

    run = run_locks("default", body, nr_cpus=1, preempt_rcu=True, **{"kvfree.profile": "v6.1"})
    lines = run.splats[0].format().split("\n")
    pid = run.tasks[0].pid
    assert lines[1:] == [
        f"in_atomic(): 0, irqs_disabled(): 0, non_block: 0, pid: {pid}, name: lk0",
        "preempt_count: 0, expected: 0",
        "RCU nest depth: 1, expected: 0",
        f"no locks held by lk0/{pid}.",
        f"CPU: 0 PID: {pid} Comm: lk0 Not tainted 6.1.0-rcukit #1",
        "Call Trace:",
        f" {symbol_frame('dump_stack_lvl')}",
        f" {symbol_frame('__might_resched')}",
        f" {symbol_frame('synchronize_rcu')}",
    ]


@pytest.mark.parametrize("preempt_rcu", [True, False])
def test_rcu_nest_depth_line_needs_preempt_rcu(preempt_rcu: bool) -> None:
    """``__might_resched()`` prints "RCU nest depth" under ``IS_ENABLED(CONFIG_PREEMPT_RCU)``
    only (kernel/sched/core.c, 5.17+); "preempt_count:" always."""
    run = run_locks(
        "default", might_sleep_under_raw, nr_cpus=1, preempt_rcu=preempt_rcu,
        **{"kvfree.profile": "v6.1"},
    )
    lines = run.splats[0].format().split("\n")
    assert lines[2] == "preempt_count: 1, expected: 0"
    assert ("RCU nest depth: 0, expected: 0" in lines) == preempt_rcu


def test_release_and_version_come_from_the_profile() -> None:
    """Reports name the kernel the profile stands for (``init_utsname()->release``); an
    explicit ``release`` wins. ``rfc`` is the RFC's 5.8-rc3 base."""
    assert KernelConfig().kernel_release == "5.9.0-rcukit"
    assert KernelConfig().replace(**{"kvfree.profile": "rfc"}).kernel_version == (5, 8)
    v61 = KernelConfig().replace(**{"kvfree.profile": "v6.1"})
    assert (v61.kernel_version, v61.kernel_release) == ((6, 1), "6.1.0-rcukit")
    assert v61.replace(release="6.1.55-rt15").kernel_release == "6.1.55-rt15"
    with pytest.raises(ConfigError, match="debug_atomic_sleep = 'yes': expected true or false"):
        KernelConfig(debug_atomic_sleep="yes")  # type: ignore[arg-type]
    assert not KernelConfig.from_toml_text("debug_atomic_sleep = false").debug_atomic_sleep
    assert KernelConfig().debug_atomic_sleep  # a debug kernel, as the RFC's reports came from


def test_trace_shows_only_printed_reports() -> None:
    """ftrace-style output shows what the kernel printed: lockdep's one report, not the
    violations its one-shot swallowed; vmstat still counts every one."""
    cfg = KernelConfig(nr_cpus=NR_CPUS).with_kernel_config("lockdep")

    async def main() -> int:
        async with rcukit.sim.boot(cfg) as k:
            k.tracer.enable()
            raw = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            spin = k.new_lock("&zone->lock", LockKind.SPINLOCK)

            async def fn(t: Task) -> None:
                await t.sync()
                with k.locks.locked(t, raw, "kvfree_call_rcu"), k.locks.locked(t, spin, "x"):
                    t.charge(10)

            for c in range(NR_CPUS):
                k.spawn(fn, c, f"lk{c}")
            await k.run()
            splat_events = [e for e in k.tracer.events if e.name == "splat"]
            assert k.vmstat["splat_invalid_wait_context"] == NR_CPUS
            return len(splat_events)

    box: list[int] = []

    async def wrap() -> None:
        box.append(await main())

    trio.run(wrap, clock=trio.testing.MockClock(autojump_threshold=0))
    assert box == [1]


@given(
    gaps_ms=st.lists(st.integers(0, 2500), min_size=1, max_size=40),
    hz=st.sampled_from([100, 250, 1000]),
)
def test_might_sleep_rate_limit_property(gaps_ms: list[int], hz: int) -> None:
    """Whatever the spacing, ``___might_sleep()``'s ``prev_jiffy`` check (kernel/sched/core.c,
    5.9; ``__might_resched()`` 5.17+) prints a report iff at least ``HZ`` jiffies passed since
    the last printed one, and every violation is still counted."""
    checker = LockChecker(prove_raw_lock_nesting=False, preempt_rt=False, hz=hz)
    ctx = FakeLockContext(preempt_count=1)
    want: list[bool] = []
    last: int | None = None
    for gap in gaps_ms:
        ctx.cpu.local_ns += gap * 1_000_000
        jiffies = ctx.cpu.local_ns * hz // 1_000_000_000
        ok = last is None or jiffies >= last + hz
        if ok:
            last = jiffies
        want.append(ok)
        checker.might_sleep(ctx, "msleep")
    assert checker.counts[SLP] == len(gaps_ms)
    assert checker.reports_printed == sum(want)
    assert [s.time_ns for s in checker.printed_reports] == [
        t for t, ok in zip(_clock(gaps_ms), want, strict=True) if ok
    ]


def _clock(gaps_ms: list[int]) -> list[int]:
    out, now = [], 0
    for g in gaps_ms:
        now += g * 1_000_000
        out.append(now)
    return out


# -- sleeping in atomic context: task.sleep_ns() is schedule_timeout() ----------------------------


@pytest.mark.parametrize(
    ("build", "ctx", "reports"),
    [
        ("default", "raw_spinlock", 1),
        ("lockdep", "raw_spinlock", 1),
        ("rt", "raw_spinlock", 1),
        ("default", "spinlock", 1),
        ("rt", "spinlock", 0),  # PREEMPT_RT's spinlock_t is an rtmutex: sleeping is allowed
        ("default", "preempt_disable", 1),
        ("default", "softirq", 1),
        ("default", "irqs_off", 0),
        ("default", "rcu_read_lock", 1),  # !PREEMPT_RCU: rcu_read_lock() disables preemption
        ("rt", "rcu_read_lock", 0),  # PREEMPT_RCU: a reader may block (a blocked reader)
    ],
)
def test_sleep_ns_in_atomic_context_is_scheduling_while_atomic(
    build: str, ctx: str, reports: int
) -> None:
    """``schedule_timeout()`` (v5.9 and v6.1, kernel/time/timer.c) arms a timer and calls
    ``schedule()``; ``__schedule()`` -> ``schedule_debug()`` (kernel/sched/core.c) prints "BUG:
    scheduling while atomic" through ``__schedule_bug()`` whenever ``in_atomic_preempt_off()``:
    preemption is disabled (a raw spinlock, a non-RT spinlock_t, ``preempt_disable()``, a
    softirq, a non-preemptible RCU reader). With only IRQs off ``schedule()`` checks nothing,
    and neither ``schedule_timeout()`` nor ``msleep()`` calls ``might_sleep()``. Every such
    sleep is reported, every time (``__schedule_bug`` is not ratelimited)."""

    async def body(k: Kernel, L: Locks, t: Task) -> None:
        for _ in range(2):
            if ctx == "raw_spinlock":
                with k.locks.locked(t, L.raw, "kvfree_call_rcu", irqsave=True):
                    await t.sleep_ns(1000)
            elif ctx == "spinlock":
                with k.locks.locked(t, L.spin, "rmqueue_bulk"):
                    await t.sleep_ns(1000)
            elif ctx == "preempt_disable":
                t.preempt_count += 1
                await t.sleep_ns(1000)
                t.preempt_count -= 1
            elif ctx == "softirq":
                with t.softirq():
                    await t.sleep_ns(1000)
            elif ctx == "irqs_off":
                with k.locks.irq_disabled(t):
                    await t.sleep_ns(1000)
            else:
                k.rcu.rcu_read_lock(t)
                await t.sleep_ns(1000)
                k.rcu.rcu_read_unlock(t)
        await t.sleep_ns(1000)  # a sleep outside any atomic section is fine

    run = run_locks(build, body)
    assert run.counts[SWA] == 2 * NR_CPUS * reports
    assert run.kernel.locks.printed[SWA] == 2 * NR_CPUS * reports
    # !PREEMPT_RCU's context switch inside a reader is also rcu_note_context_switch()'s
    # might-sleep complaint (modelled by the RCU engine, counted every time)
    rcu_sleep = 2 * NR_CPUS if (ctx, build) == ("rcu_read_lock", "default") else 0
    assert run.counts["sleeping_in_atomic"] == rcu_sleep
    swa = [s for s in run.splats if s.kind == SWA]
    assert len(swa) == reports  # kept once per call site
    for s in swa:
        assert s.ip == "schedule_timeout" and s.preempt_count >= 2
        assert s.format().startswith("BUG: scheduling while atomic: lk")
    assert run.kernel.locks.tainted == bool(reports)
