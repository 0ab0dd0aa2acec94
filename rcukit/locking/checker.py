"""The wait-context checker: lockdep's ``check_wait_context`` and RT's sleeping spinlocks.

Rules, from ``kernel/locking/lockdep.c`` and ``Documentation/locking/locktypes.rst``:

* ``check_wait_context``: ``curr_inner`` is the smallest inner wait type among the task's
  context and the locks it holds; taking a lock whose outer wait type is larger is reported as
  ``BUG: Invalid wait context``. Without ``CONFIG_PROVE_RAW_LOCK_NESTING`` LD_WAIT_CONFIG equals
  LD_WAIT_SPIN, so a ``spinlock_t`` under a ``raw_spinlock_t`` passes.
* On PREEMPT_RT a ``spinlock_t`` is an rt_mutex: taking it in atomic context (preemption or
  IRQs disabled, e.g. under a raw lock) is ``BUG: scheduling while atomic``; a mutex or any
  ``might_sleep()`` there is ``BUG: sleeping function called from invalid context``.

A splat is recorded every time (``counts``), printed once per call site like lockdep, and in
strict mode raised as :class:`rcukit.errors.SplatError`.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO

import attrs

from rcukit.errors import LockUsageError, SplatError
from rcukit.locking.locks import HeldLock, Lock, LockKind, WaitType
from rcukit.locking.splat import HeldLockInfo, Splat


class LockCpu(Protocol):
    """What lockdep reads of the CPU a task runs on: its id and its local clock."""

    id: int
    local_ns: int


class LockContext(Protocol):
    """What the checker reads of ``current``, as lockdep reads ``task_struct``.

    A protocol rather than the scheduler's ``Task`` so the lock model sits below the scheduler:
    tasks carry their held locks, the checker never needs to know how tasks are scheduled.
    """

    pid: int
    preempt_count: int
    irqs_disabled: int
    in_hardirq: int
    in_softirq: int
    rcu_read_nesting: int
    rcu_blocked_reader: bool
    held_locks: list[HeldLock]

    @property
    def cpu(self) -> LockCpu: ...
    @property
    def comm(self) -> str: ...

    def in_atomic(self) -> bool: ...



_PKG_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def python_site(skip: tuple[str, ...]) -> str:
    """``file:line`` of the innermost Python frame outside ``skip`` (path prefixes): the
    modelled caller, where the kernel's report would print the caller's ``_RET_IP_``."""
    f = sys._getframe(1)
    while f is not None:
        fn = f.f_code.co_filename
        if not fn.startswith(skip):
            return f"{os.path.basename(fn)}:{f.f_lineno}"
        f = f.f_back  # type: ignore[assignment]
    return "?"


_SKIP_DIRS = (
    os.path.join(_PKG_DIR, "locking"),
    os.path.join(_PKG_DIR, "sched"),
    os.path.dirname(os.path.abspath(contextlib.__file__)) + os.sep + "contextlib",
)


@attrs.define(eq=False, kw_only=True)
class LockChecker:
    """Per-kernel lock model; every lock operation of every simulated task goes through here."""

    #: ``CONFIG_PROVE_RAW_LOCK_NESTING``: LD_WAIT_CONFIG stays apart from LD_WAIT_SPIN.
    prove_raw: bool = attrs.field(alias="prove_raw_lock_nesting")
    preempt_rt: bool
    #: Also raise :class:`SplatError` for every splat, once it is recorded.
    strict: bool = False
    #: The release a splat's ``Not tainted`` line prints (``utsname()->release``).
    kernel_release: str = attrs.field(default="5.9.0-rcukit", alias="release")
    #: Where splats are printed (once per call site); None records them silently.
    out: TextIO | None = None
    splats: list[Splat] = attrs.field(factory=list, init=False)
    counts: Counter[str] = attrs.field(factory=Counter, init=False)
    _reported: set[tuple[str, str, str, str]] = attrs.field(factory=set, init=False)
    listeners: list[Callable[[Splat], None]] = attrs.field(factory=list, init=False)
    max_recorded: int = attrs.field(default=10_000, init=False)

    # -- context ---------------------------------------------------------------------------
    def task_wait_context(self, task: LockContext) -> int:
        """``task_wait_context()``: hardirq SPIN (not threaded), softirq CONFIG, task MAX."""
        if task.in_hardirq:
            wt = WaitType.SPIN
        elif task.in_softirq:
            wt = WaitType.CONFIG
        else:
            wt = WaitType.MAX
        return wt.effective(self.prove_raw)

    def curr_inner(self, task: LockContext) -> int:
        inner = self.task_wait_context(task)
        for h in task.held_locks:
            w = h.lock.kind.wait_inner.effective(self.prove_raw)
            if w < inner:
                inner = w
        return inner

    # -- acquire / release -------------------------------------------------------------------
    def acquire(self, task: LockContext, lock: Lock, ip: str, *, irqsave: bool = False) -> None:
        """Take ``lock`` (the caller is synced if the lock is shared between CPUs)."""
        kind = lock.kind
        if task.held_locks or task.in_hardirq or task.in_softirq:
            outer = kind.wait_outer.effective(self.prove_raw)
            if outer > self.curr_inner(task):
                self._report("invalid_wait_context", task, lock, ip)
        if kind is LockKind.MUTEX:
            if task.in_atomic():
                self._report("sleeping_in_atomic", task, lock, ip)
        elif kind is LockKind.SPINLOCK and self.preempt_rt and task.in_atomic():
            self._report("scheduling_while_atomic", task, lock, ip)
        now = task.cpu.local_ns
        if lock.free_at_ns > now:
            lock.contentions += 1
            lock.wait_ns += lock.free_at_ns - now
            task.cpu.local_ns = lock.free_at_ns
        self._take(task, lock, ip, irqsave)

    def _take(self, task: LockContext, lock: Lock, ip: str, irqsave: bool) -> None:
        """The owner's side of an acquisition: preemption and IRQ state, the held-lock stack.
        On PREEMPT_RT a ``spinlock_t`` is an rtmutex: it leaves both preemption and IRQs on."""
        kind = lock.kind
        lock.acquisitions += 1
        lock.owner = task
        sleeping = kind is LockKind.SPINLOCK and self.preempt_rt
        preempt = kind is LockKind.RAW_SPINLOCK or (kind is LockKind.SPINLOCK and not sleeping)
        if irqsave and not sleeping:
            task.irqs_disabled += 1
        else:
            irqsave = False
        if preempt:
            task.preempt_count += 1
        task.held_locks.append(HeldLock(lock, ip, irqsave, preempt))

    def trylock(self, task: LockContext, lock: Lock, ip: str, *, irqsave: bool = False) -> bool:
        """``spin_trylock[_irqsave]``: take ``lock`` only if nobody holds it at this moment.

        A trylock never waits, so lockdep does not check its wait context and an RT
        ``spinlock_t`` trylock never sleeps: no splat either way. This is what makes
        ``alloc_pages_nolock()`` callable under a raw lock (kernel.md 2.4). Busy means held now
        or released later than the caller's clock (the caller is synced).
        """
        now = task.cpu.local_ns
        if lock.owner is not None or lock.free_at_ns > now:
            return False
        self._take(task, lock, ip, irqsave)
        return True

    def release(self, task: LockContext, lock: Lock) -> None:
        held = task.held_locks
        for i in range(len(held) - 1, -1, -1):
            h = held[i]
            if h.lock is lock:
                del held[i]
                if h.preempt:
                    task.preempt_count -= 1
                if h.irqsave:
                    task.irqs_disabled -= 1
                lock.owner = None
                lock.free_at_ns = task.cpu.local_ns
                return
        raise LockUsageError(
            f"{task.comm}/{task.pid} releases {lock.name} ({lock.kind.value}) it does not hold"
        )

    @contextmanager
    def locked(
        self, task: LockContext, lock: Lock, ip: str, *, irqsave: bool = False
    ) -> Iterator[None]:
        self.acquire(task, lock, ip, irqsave=irqsave)
        try:
            yield
        finally:
            self.release(task, lock)

    @contextmanager
    def irq_disabled(self, task: LockContext) -> Iterator[None]:
        """``local_irq_save``/``local_irq_restore``."""
        task.irqs_disabled += 1
        try:
            yield
        finally:
            task.irqs_disabled -= 1

    # -- sleeping -------------------------------------------------------------------------------
    def might_sleep(self, task: LockContext, ip: str) -> None:
        """``might_sleep()``: a splat if the caller is atomic."""
        if task.in_atomic() or (task.rcu_read_nesting and not task.rcu_blocked_reader):
            self._report("sleeping_in_atomic", task, None, ip)

    def schedule(self, task: LockContext, ip: str) -> None:
        """``__schedule_bug``: a task really sleeps while atomic."""
        if task.in_atomic():
            self._report("scheduling_while_atomic", task, None, ip)

    # -- reporting ------------------------------------------------------------------------------
    def _report(self, kind: str, task: LockContext, lock: Lock | None, ip: str) -> None:
        held = tuple(
            HeldLockInfo(
                h.lock.name,
                h.lock.addr,
                h.lock.kind.wait_outer.effective(self.prove_raw),
                h.lock.kind.wait_inner.effective(self.prove_raw),
                h.ip,
            )
            for h in task.held_locks
        )
        ctx = self.task_wait_context(task)
        # __schedule_bug prints preempt_disable_ip: where preemption went off, not where we are.
        preempt_ip = next((h.ip for h in task.held_locks if h.preempt), "")
        splat = Splat(
            kind=kind,
            cpu=task.cpu.id,
            comm=task.comm,
            pid=task.pid,
            time_ns=task.cpu.local_ns,
            release=self.kernel_release,
            lock_name=lock.name if lock else "",
            lock_addr=lock.addr if lock else 0,
            lock_outer=lock.kind.wait_outer.effective(self.prove_raw) if lock else 0,
            lock_inner=lock.kind.wait_inner.effective(self.prove_raw) if lock else 0,
            ip=ip,
            site=python_site(_SKIP_DIRS),
            context=(ctx, ctx),
            held=held,
            preempt_count=task.preempt_count,
            irqs_disabled=bool(task.irqs_disabled),
            preempt_ip=preempt_ip,
            rcu_depth=task.rcu_read_nesting,
        )
        self.record(splat)

    def record(self, splat: Splat) -> None:
        self.counts[splat.kind] += 1
        key = splat.key()
        first = key not in self._reported
        if first:
            self._reported.add(key)
            if len(self.splats) < self.max_recorded:
                self.splats.append(splat)
            if self.out is not None:
                print(splat.format(), file=self.out)
        for cb in self.listeners:
            cb(splat)
        if self.strict:
            raise SplatError(splat)

    def unique_sites(self) -> int:
        return len(self._reported)
