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

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.errors import LockUsageError, SplatError
from rcukit.kernel import Kernel
from rcukit.locking import SPLAT_KINDS, Lock, LockKind, Splat, WaitType
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
    "raw->spinlock_t": (
        raw_then_spin,
        {"default": expect(), "lockdep": expect(**{IWC: N}), "rt": expect(**{SWA: N})},
    ),
    "spinlock_t->raw": (spin_then_raw, dict.fromkeys(BUILDS, expect())),
    "raw->raw": (raw_then_raw, dict.fromkeys(BUILDS, expect())),
    "spinlock_t->spinlock_t": (spin_then_spin, dict.fromkeys(BUILDS, expect())),
    "raw->mutex": (raw_then_mutex, dict.fromkeys(BUILDS, expect(**{IWC: N, SLP: N}))),
    "mutex->spinlock_t": (mutex_then_spin, dict.fromkeys(BUILDS, expect())),
    "irq_save->spinlock_t": (
        irqsave_then_spin,
        # lockdep does not track plain irq-off for wait contexts; RT's rt_mutex does care.
        {"default": expect(), "lockdep": expect(), "rt": expect(**{SWA: N})},
    ),
    "softirq->mutex": (softirq_then_mutex, dict.fromkeys(BUILDS, expect(**{IWC: N, SLP: N}))),
    "hardirq->spinlock_t": (
        hardirq_then_spin,
        {"default": expect(), "lockdep": expect(**{IWC: N}), "rt": expect(**{SWA: N})},
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
    # Printed (recorded) once per call site and kind, however many CPUs hit it.
    assert len(run.splats) == sum(1 for v in expected[build].values() if v)
    assert {s.cpu for s in run.splats} <= {0}
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


def _trailer(s: Splat, ip: str) -> list[str]:
    return [
        "stack backtrace:",
        f"CPU: 0 PID: {s.pid} Comm: lk0 Not tainted 5.9.0-rcukit #1",
        f"Call Trace: {ip}+0x0/0x0 <- {s.site}",
    ]


def test_invalid_wait_context_text_with_prove_raw_lock_nesting() -> None:
    run = run_locks("lockdep", raw_then_spin)
    s = run.splats[0]
    L = run.locks
    pid = run.tasks[0].pid
    assert (s.kind, s.cpu, s.comm, s.pid, s.lock_name, s.ip) == (
        IWC, 0, "lk0", pid, "&zone->lock", "rmqueue_bulk"
    )
    assert SITE_RE.match(s.site)
    assert s.title == "BUG: Invalid wait context"
    assert s.format().split("\n") == [
        "",
        "=============================",
        "[ BUG: Invalid wait context ]",
        "5.9.0-rcukit #1 Not tainted",
        "-----------------------------",
        f"lk0/{pid} is trying to lock:",
        f"{L.spin.addr:016x} (&zone->lock){{....}}-{{3:3}}, at: rmqueue_bulk+0x0/0x0",
        "other info that might help us debug this:",
        "context-{5:5}",
        f"1 lock held by lk0/{pid}:",
        f" #0: {L.raw.addr:016x} (krc.lock){{....}}-{{2:2}}, at: kvfree_call_rcu+0x0/0x0",
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
    run = run_locks(build, raw_then_mutex)
    iwc, slp = run.splats
    L = run.locks
    pid = run.tasks[0].pid
    lines = iwc.format().split("\n")
    assert lines[5:11] == [
        f"lk0/{pid} is trying to lock:",
        f"{L.mutex.addr:016x} (&rcu_state.barrier_mutex){{....}}-{{{mutex_wt}}}"
        ", at: rcu_barrier+0x0/0x0",
        "other info that might help us debug this:",
        f"context-{{{ctx}}}",
        f"1 lock held by lk0/{pid}:",
        f" #0: {L.raw.addr:016x} (krc.lock){{....}}-{{{raw_wt}}}, at: kvfree_call_rcu+0x0/0x0",
    ]
    # The mutex also sleeps with preemption off (raw_spin_lock without irqsave: IRQs stay on).
    assert slp.format().split("\n") == [
        f"BUG: sleeping function called from invalid context at {slp.site}",
        f"in_atomic(): 1, irqs_disabled(): 0, non_block: 0, pid: {pid}, name: lk0",
        "preempt_count: 1, expected: 0",
        "RCU nest depth: 0, expected: 0",
        f"1 lock held by lk0/{pid}:",
        f" #0: {L.raw.addr:016x} (krc.lock){{....}}-{{{raw_wt}}}, at: kvfree_call_rcu+0x0/0x0",
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
    run = run_locks("lockdep", softirq_then_mutex)
    s = run.splats[0]
    pid = run.tasks[0].pid
    lines = s.format().split("\n")
    assert lines[8:10] == ["context-{3:3}", f"no locks held by lk0/{pid}."]
    assert lines[6].endswith("(&rcu_state.barrier_mutex){....}-{4:4}, at: rcu_barrier+0x0/0x0")


def test_scheduling_while_atomic_text_on_rt() -> None:
    run = run_locks("rt", raw_then_spin)
    s = run.splats[0]
    L = run.locks
    pid = run.tasks[0].pid
    assert s.title == "BUG: scheduling while atomic"
    assert (s.preempt_count, s.irqs_disabled) == (1, True)
    assert s.format().split("\n") == [
        f"BUG: scheduling while atomic: lk0/{pid}/0x00000001",
        "sleeping lock: (&zone->lock) taken by rmqueue_bulk",
        f"1 lock held by lk0/{pid}:",
        f" #0: {L.raw.addr:016x} (krc.lock){{....}}-{{2:2}}, at: kvfree_call_rcu+0x0/0x0",
        # Where preemption went off (the raw lock), as __schedule_bug prints preempt_disable_ip.
        "Preemption disabled at: kvfree_call_rcu+0x0/0x0",
        *_trailer(s, "rmqueue_bulk"),
    ]


def test_splat_json() -> None:
    run = run_locks("rt", raw_then_spin)
    s = run.splats[0]
    assert s.to_json() == {
        "kind": SWA,
        "cpu": 0,
        "comm": "lk0",
        "pid": run.tasks[0].pid,
        "time_ns": s.time_ns,
        "lock": "&zone->lock",
        "ip": "rmqueue_bulk",
        "site": s.site,
        "held": ["krc.lock"],
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


def test_once_per_call_site(capsys: pytest.CaptureFixture[str]) -> None:
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
    # Counted every time: 4 CPUs x 4 acquisitions; printed once per call site.
    assert run.counts == expect(**{IWC: 16})
    assert err.count("[ BUG: Invalid wait context ]") == 2
    assert len(run.splats) == 2
    assert run.kernel.locks.unique_sites() == 2
    assert run.splats[0].site != run.splats[1].site
    assert err == "".join(s.format() + "\n" for s in run.splats)
    # The kernel also counts splats the /proc/vmstat way.
    assert run.kernel.vmstat["splat_invalid_wait_context"] == 16


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
    assert str(err).startswith("BUG: scheduling while atomic: lk0/")


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


def test_might_sleep_in_an_rcu_reader_prints_the_nest_depth() -> None:
    async def body(k: Kernel, L: Locks, t: Task) -> None:
        t.rcu_read_nesting += 1  # what rcu_read_lock() does to the task
        k.locks.might_sleep(t, "synchronize_rcu")
        t.rcu_read_nesting -= 1
        k.locks.might_sleep(t, "synchronize_rcu")  # outside the reader: fine

    run = run_locks("default", body, nr_cpus=1)
    assert run.counts == expect(**{SLP: 1})
    lines = run.splats[0].format().split("\n")
    pid = run.tasks[0].pid
    assert lines[1:5] == [
        f"in_atomic(): 0, irqs_disabled(): 0, non_block: 0, pid: {pid}, name: lk0",
        "preempt_count: 0, expected: 0",
        "RCU nest depth: 1, expected: 0",
        f"no locks held by lk0/{pid}.",
    ]
