"""The wait-context checker: lockdep's ``check_wait_context`` and RT's sleeping spinlocks.

Rules, from ``kernel/locking/lockdep.c``, ``kernel/sched/core.c``,
``kernel/locking/spinlock_rt.c`` and ``Documentation/locking/locktypes.rst`` (kernel.md 7, 8.3,
8.4):

* ``check_wait_context``: ``curr_inner`` is the smallest inner wait type among the task's
  context and the locks it holds; taking a lock whose outer wait type is larger is reported as
  ``BUG: Invalid wait context``. Without ``CONFIG_PROVE_RAW_LOCK_NESTING`` LD_WAIT_CONFIG equals
  LD_WAIT_SPIN, so a ``spinlock_t`` under a ``raw_spinlock_t`` passes.
* On PREEMPT_RT a ``spinlock_t`` is ``rt_spin_lock()``, which starts with a might-sleep check:
  in atomic context (preemption or IRQs off, e.g. under a raw lock) that is ``BUG: sleeping
  function called from invalid context at kernel/locking/spinlock_rt.c:NN`` (with
  ``CONFIG_DEBUG_ATOMIC_SLEEP``). Only if the rtmutex is contended does the task block, and
  ``schedule()`` then reports ``BUG: scheduling while atomic`` (``__schedule_bug``).
* A mutex or any ``might_sleep()`` in atomic context is the might-sleep report.

What is printed is what the kernel prints: lockdep reports once per boot (every report starts
with ``debug_locks_off()``), might-sleep reports at most once per second (``prev_jiffy``),
``__schedule_bug`` every time. Every violation is still counted (``counts``, "would report") and
kept once per call site (``splats``); what was printed is counted apart (``printed``,
``reports_printed``, ``first_report``). In strict mode every violation raises
:class:`rcukit.errors.SplatError`.
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
from rcukit.panic import TAINT_WARN, PanicState, ReportContext


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


def rt_spin_lock_file_line(version: tuple[int, int]) -> str:
    """``__FILE__:__LINE__`` of ``rt_spin_lock()``'s might-sleep check, as reports print it.

    Before 5.15 the -rt patchset had ``rt_spin_lock_fastlock()`` in kernel/locking/rtmutex.c
    call ``might_sleep_no_state_check()`` (5.10-rt reports say ``rtmutex.c:969``, 5.2-rt 968);
    5.15 moved RT locks to spinlock_rt.c (``___might_sleep()`` on line 35), 5.17 made it
    ``rtlock_might_resched()`` (line 46, e.g. 5.17.1-rt17 and 6.2-rc3-rt1 reports), and 6.6
    reports say line 48 (6.6.31, 6.12-rc7, 6.16-rc1-rt1; the 6.3-6.5 line is inferred).
    """
    if version < (5, 15):
        return "kernel/locking/rtmutex.c:969"
    if version < (5, 17):
        return "kernel/locking/spinlock_rt.c:35"
    if version < (6, 6):
        return "kernel/locking/spinlock_rt.c:46"
    return "kernel/locking/spinlock_rt.c:48"


#: ``rcu_lock_map``'s address in reports: RT spinlocks hold an ``rcu_read_lock()``.
_RCU_LOCK_MAP_ADDR = 0xFFFFFFFF82B5C2E0
#: ``HARDIRQ_OFFSET`` and ``SOFTIRQ_OFFSET`` in ``preempt_count()``.
_HARDIRQ_OFFSET = 1 << 16
_SOFTIRQ_OFFSET = 1 << 8


@attrs.frozen
class LockStats:
    """What the lock checker saw and what the kernel printed (``LockChecker.statistics()``).

    The first three count every violation the checks see ("would report": lockdep and
    might-sleep checks as if they were neither one-shot nor rate-limited); ``reports_printed``
    and ``first_report`` are what a kernel log shows.
    """

    #: "BUG: sleeping function called from invalid context" (might_sleep / rt_spin_lock).
    sleeping_in_atomic: int
    #: "BUG: scheduling while atomic" (``__schedule_bug``: the task really blocked).
    scheduling_while_atomic: int
    #: lockdep's "BUG: Invalid wait context".
    invalid_wait_context: int
    #: Reports the kernel printed, every kind (RCU stall warnings included).
    reports_printed: int
    #: The first printed report's text, exactly as printed; "" if none was.
    first_report: str
    #: Printed reports per kind.
    printed: dict[str, int]

    def to_json(self) -> dict[str, object]:
        return attrs.asdict(self)


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
    #: The kernel whose report formats and file:line are printed, ``(major, minor)``.
    kernel_version: tuple[int, int] = (5, 9)
    #: ``CONFIG_DEBUG_ATOMIC_SLEEP``: might-sleep checks exist at all.
    debug_atomic_sleep: bool = True
    #: ``CONFIG_PREEMPT_RCU`` (forced by PREEMPT_RT): might-sleep prints the RCU nest depth.
    preempt_rcu: bool = False
    #: ``HZ``: might-sleep reports are rate-limited to one per ``HZ`` jiffies.
    hz: int = 1000
    #: Where printed reports go; None keeps them in ``printed_reports`` only.
    out: TextIO | None = None
    #: One splat per call site (``Splat.key``), printed or not, in order.
    splats: list[Splat] = attrs.field(factory=list, init=False)
    #: Every violation per kind ("would report").
    counts: Counter[str] = attrs.field(factory=Counter, init=False)
    #: Printed reports per kind.
    printed: Counter[str] = attrs.field(factory=Counter, init=False)
    #: The printed reports, in order (the first ``max_recorded``).
    printed_reports: list[Splat] = attrs.field(factory=list, init=False)
    first_report: str = attrs.field(default="", init=False)
    #: lockdep's ``debug_locks``: cleared by its first report, and lockdep stays off.
    debug_locks: bool = attrs.field(default=True, init=False)
    #: The kernel's taint and ``panic_on_warn`` (:mod:`rcukit.panic`): every printed
    #: might-sleep and scheduling-while-atomic report adds TAINT_WARN.
    panic: PanicState = attrs.field(factory=PanicState)
    #: ``___might_sleep``'s ``static unsigned long prev_jiffy`` (None: never printed).
    prev_jiffy: int | None = attrs.field(default=None, init=False)
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
        """Take ``lock`` (the caller is synced if the lock is shared between CPUs).

        The checks run in the kernel's order: ``mutex_lock()`` calls ``might_sleep()`` before
        lockdep's ``mutex_acquire()``; ``rt_spin_lock()`` calls ``spin_acquire()`` (lockdep)
        before its might-sleep check, and only then tries the rtmutex, which blocks if another
        task holds it (here: held now, or released later than the caller's clock).
        """
        kind = lock.kind
        if kind is LockKind.MUTEX and task.in_atomic():
            self._report("sleeping_in_atomic", task, lock, ip)
        if task.held_locks or task.in_hardirq or task.in_softirq:
            outer = kind.wait_outer.effective(self.prove_raw)
            if outer > self.curr_inner(task):
                self._report("invalid_wait_context", task, lock, ip)
        rtlock = kind is LockKind.SPINLOCK and self.preempt_rt
        if rtlock and task.in_atomic():
            self._report(
                "sleeping_in_atomic", task, lock, ip,
                file_line=rt_spin_lock_file_line(self.kernel_version), rtlock=True,
            )
        now = task.cpu.local_ns
        busy = lock.free_at_ns > now
        if rtlock and (busy or lock.owner is not None) and self._preempt_count(task):
            # rtlock_slowlock() -> schedule_rtlock() -> __schedule(): schedule_debug().
            self._report("scheduling_while_atomic", task, lock, ip, rtlock=True)
        if busy:
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
        """``might_sleep()``: a splat if the caller is atomic (with DEBUG_ATOMIC_SLEEP)."""
        if task.in_atomic() or (task.rcu_read_nesting and not task.rcu_blocked_reader):
            self._report("sleeping_in_atomic", task, None, ip)

    def schedule(self, task: LockContext, ip: str) -> None:
        """``__schedule_bug``: a task really sleeps while atomic (``in_atomic_preempt_off()``:
        preemption off, not merely IRQs)."""
        if self._preempt_count(task):
            self._report("scheduling_while_atomic", task, None, ip)

    # -- reporting ------------------------------------------------------------------------------
    @staticmethod
    def _preempt_count(task: LockContext) -> int:
        """``preempt_count()`` as the kernel keeps it: a softirq being served is SOFTIRQ_OFFSET
        (the task counts it as one), a hardirq HARDIRQ_OFFSET."""
        soft = task.in_softirq
        hard = task.in_hardirq
        return task.preempt_count - soft + soft * _SOFTIRQ_OFFSET + hard * _HARDIRQ_OFFSET

    def _held_info(
        self, task: LockContext, acquiring: Lock | None, ip: str
    ) -> tuple[HeldLockInfo, ...]:
        """``current->held_locks`` as lockdep lists them: an RT spinlock is followed by the
        ``rcu_read_lock()`` that ``rt_spin_lock()`` takes after the rtmutex, and a lock being
        taken by ``rt_spin_lock()`` is listed already (``spin_acquire()`` comes first)."""
        prove = self.prove_raw
        out: list[HeldLockInfo] = []
        for h in task.held_locks:
            k = h.lock.kind
            out.append(
                HeldLockInfo(
                    h.lock.name, h.lock.addr,
                    k.wait_outer.effective(prove), k.wait_inner.effective(prove), h.ip,
                )
            )
            if k is LockKind.SPINLOCK and self.preempt_rt:
                rcu = LockKind.RCU
                out.append(
                    HeldLockInfo(
                        "rcu_read_lock", _RCU_LOCK_MAP_ADDR,
                        rcu.wait_outer.effective(prove), rcu.wait_inner.effective(prove),
                        "rt_spin_lock",
                    )
                )
        if acquiring is not None:
            k = acquiring.kind
            out.append(
                HeldLockInfo(
                    acquiring.name, acquiring.addr,
                    k.wait_outer.effective(prove), k.wait_inner.effective(prove), ip,
                )
            )
        return tuple(out)

    def _report(
        self, kind: str, task: LockContext, lock: Lock | None, ip: str,
        *, file_line: str = "", rtlock: bool = False,
    ) -> None:
        if kind == "sleeping_in_atomic" and not self.debug_atomic_sleep:
            return
        held = self._held_info(task, lock if rtlock else None, ip)
        ctx = self.task_wait_context(task)
        # Reports print preempt_disable_ip: where preemption went off, not where we are.
        preempt_ip = next((h.ip for h in task.held_locks if h.preempt), "")
        rcu_depth = task.rcu_read_nesting
        if self.preempt_rt:
            rcu_depth += sum(1 for h in task.held_locks if h.lock.kind is LockKind.SPINLOCK)
        count = self._preempt_count(task)
        if kind == "scheduling_while_atomic":
            count += 1  # schedule()'s own preempt_disable() before __schedule()
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
            preempt_count=count,
            irqs_disabled=bool(task.irqs_disabled),
            preempt_ip=preempt_ip,
            rcu_depth=rcu_depth,
            # rtlock_might_resched() expects the current RCU depth (RTLOCK_RESCHED_OFFSETS).
            rcu_expected=rcu_depth if rtlock else 0,
            file_line=file_line,
        )
        self.record(splat)

    def _may_print(self, splat: Splat) -> bool:
        """Whether the kernel prints this report, and the state its printing changes.

        * lockdep (``print_lock_invalid_wait_context``): ``if (!debug_locks_off()) return 0;``
          the first report turns lockdep off for the rest of the boot.
        * ``___might_sleep``/``__might_resched``: ``if (time_before(jiffies, prev_jiffy + HZ)
          && prev_jiffy) return;`` one report per second, whoever calls; then
          ``add_taint(TAINT_WARN, LOCKDEP_STILL_OK)``.
        * ``__schedule_bug``: every time, then ``add_taint(TAINT_WARN, ...)``.
        """
        kind = splat.kind
        if kind == "invalid_wait_context":
            printed = self.debug_locks
            self.debug_locks = False
            return printed
        if kind == "sleeping_in_atomic":
            jiffies = splat.time_ns * self.hz // 1_000_000_000
            if self.prev_jiffy is not None and jiffies < self.prev_jiffy + self.hz:
                return False
            self.prev_jiffy = jiffies
            self.panic.add_taint(TAINT_WARN)
            return True
        if kind == "scheduling_while_atomic" and not self.panic.panic_on_warn:
            # __schedule_bug() adds TAINT_WARN after the stack dump, which panic_on_warn
            # never reaches
            self.panic.add_taint(TAINT_WARN)
        return True

    def record(self, splat: Splat) -> None:
        """Count a violation, print it if the kernel would, keep one per call site."""
        if splat.kind == "sleeping_in_atomic" and not self.debug_atomic_sleep:
            return
        self.counts[splat.kind] += 1
        taint, lockdep_off = self.panic.tainted_mask, not self.debug_locks
        printed = self._may_print(splat)
        splat = attrs.evolve(
            splat,
            version=self.kernel_version,
            preempt_rcu=self.preempt_rcu,
            taint=taint,
            lockdep_off=lockdep_off,
            printed=printed,
        )
        key = splat.key()
        if key not in self._reported:
            self._reported.add(key)
            if len(self.splats) < self.max_recorded:
                self.splats.append(splat)
        fatal = (
            printed and splat.kind == "scheduling_while_atomic" and self.panic.panic_on_warn
        )
        if printed:
            self.printed[splat.kind] += 1
            text = splat.format(dump_stack=not fatal)
            if not self.first_report:
                self.first_report = text
            if len(self.printed_reports) < self.max_recorded:
                self.printed_reports.append(splat)
            if self.out is not None:
                print(text, file=self.out)
        for cb in self.listeners:
            cb(splat)
        if fatal:
            # __schedule_bug(): "if (panic_on_warn) panic("scheduling while atomic\n");"
            # (6.2+: check_panic_on_warn("scheduling while atomic")), before dump_stack()
            # and add_taint().
            msg = "scheduling while atomic"
            if self.kernel_version >= (6, 2):
                msg += ": panic_on_warn set ..."
            self.panic.panic(
                ReportContext.at(splat.cpu, splat.pid, splat.comm, splat.time_ns), msg,
                ["__schedule_bug", "__schedule", "schedule", splat.ip],
            )
        if self.strict:
            raise SplatError(splat)

    @property
    def tainted(self) -> bool:
        """TAINT_WARN is set (by a report of this model or any other)."""
        return self.panic.test_taint(TAINT_WARN)

    def debug_locks_off(self) -> bool:
        """``__debug_locks_off()``: lockdep stops reporting; True if it was on."""
        was = self.debug_locks
        self.debug_locks = False
        return was

    def unique_sites(self) -> int:
        """Call sites with a violation (kind, lock, ip, site)."""
        return len(self._reported)

    @property
    def reports_printed(self) -> int:
        return sum(self.printed.values())

    def statistics(self) -> LockStats:
        """Would-report counts per kind, and what was printed (see :class:`LockStats`)."""
        c = self.counts
        return LockStats(
            sleeping_in_atomic=c["sleeping_in_atomic"],
            scheduling_while_atomic=c["scheduling_while_atomic"],
            invalid_wait_context=c["invalid_wait_context"],
            reports_printed=self.reports_printed,
            first_report=self.first_report,
            printed=dict(sorted(self.printed.items())),
        )
