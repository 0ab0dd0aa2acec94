"""The machine every subsystem is built on: CPUs and their clocks, locks, tracing, workqueues.

It is what a kernel has before its first subsystem initialises (``setup_arch``, ``sched_init``,
``lockdep_init``, ``workqueue_init_early`` in ``start_kernel()``), so mm, RCU and kvfree_rcu type
against it and never against the :class:`~rcukit.kernel.Kernel` that composes them: a subsystem
sees the machine and the subsystems handed to its constructor, nothing else. There is no
module-level state: two machines in one process never see each other.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Callable
from typing import Any

from rcukit.config import KernelConfig
from rcukit.locking.checker import LockChecker, LockStats
from rcukit.locking.locks import Lock, LockKind
from rcukit.locking.splat import SPLAT_KINDS, Splat
from rcukit.panic import PanicState
from rcukit.sched.sim import Cpu, Simulator, Task
from rcukit.trace.events import NO_FLAGS, Counters, Tracer, lat_flags
from rcukit.wq import Workqueue, wq_worker_sleeping

TickHook = Callable[[Task, bool], None]
SwitchHook = Callable[[Task], None]
CpuHook = Callable[[Cpu], None]

#: Lock addresses start in the direct map, as a kmalloc'ed lock's would.
_LOCK_ADDR_BASE = 0xFFFF888003A00000


class _Hooks:
    """Forwards scheduler events to the subsystems that registered for them (RCU, wq)."""

    def __init__(self) -> None:
        self.tick: list[TickHook] = []
        self.switch: list[SwitchHook] = []
        self.idle_enter: list[CpuHook] = []
        self.idle_exit: list[CpuHook] = []

    def on_tick(self, task: Task, voluntary: bool) -> None:
        for h in self.tick:
            h(task, voluntary)

    def on_context_switch(self, prev: Task) -> None:
        for h in self.switch:
            h(prev)

    def on_idle_enter(self, cpu: Cpu) -> None:
        for h in self.idle_enter:
            h(cpu)

    def on_idle_exit(self, cpu: Cpu) -> None:
        for h in self.idle_exit:
            h(cpu)


class Machine:
    """One simulated machine: ``config``, ``sim`` (CPUs, tasks, timers), ``locks`` (the lock
    model), ``tracer`` and ``vmstat``, the seeded ``rng``, and the system workqueues."""

    def __init__(self, config: KernelConfig | None = None) -> None:
        self.config = cfg = config or KernelConfig()
        self._hooks = _Hooks()
        self.sim = Simulator(cfg.nr_cpus, cfg.tick_ns, self._hooks)
        self.sim.switch_cost_ns = cfg.cost.context_switch_ns
        out = sys.stderr if cfg.print_splats else None
        #: ``tainted_mask``, ``panic_on_warn`` and the bug reports (:mod:`rcukit.panic`).
        self.panic = PanicState(
            version=cfg.kernel_version, release=cfg.kernel_release,
            panic_on_warn=cfg.panic_on_warn, out=out,
        )
        self.locks = LockChecker(
            prove_raw_lock_nesting=cfg.prove_raw_lock_nesting,
            preempt_rt=cfg.preempt_rt,
            strict=cfg.strict_splats,
            release=cfg.kernel_release,
            kernel_version=cfg.kernel_version,
            debug_atomic_sleep=cfg.debug_atomic_sleep,
            preempt_rcu=cfg.rcu_preemptible,
            hz=cfg.hz,
            out=out,
            panic=self.panic,
        )
        self.panic.debug_locks_off = self.locks.debug_locks_off
        self.sim.locks = self.locks
        self.tracer = Tracer()
        self.tracer.context = self._cpu_flags
        self.vmstat = Counters()
        self.rng = random.Random(cfg.seed)
        self.system_wq = self._workqueue("events")
        self.system_highpri_wq = self._workqueue("events_highpri", highpri=True)
        self.system_unbound_wq = self._workqueue("events_unbound")
        self.locks.listeners.append(self._trace_splat)
        self.add_switch_hook(wq_worker_sleeping)
        self._lock_addr = _LOCK_ADDR_BASE

    def _workqueue(self, name: str, *, highpri: bool = False) -> Workqueue:
        cfg = self.config
        return Workqueue(
            self.sim, self.locks, self.tracer, name,
            queue_work_ns=cfg.cost.queue_work_ns, tick_ns=cfg.tick_ns, highpri=highpri,
        )

    # -- scheduler hooks -----------------------------------------------------------------------
    def add_tick_hook(self, fn: TickHook) -> None:
        self._hooks.tick.append(fn)

    def add_switch_hook(self, fn: SwitchHook) -> None:
        self._hooks.switch.append(fn)

    def add_idle_hooks(self, enter: CpuHook, exit: CpuHook) -> None:
        self._hooks.idle_enter.append(enter)
        self._hooks.idle_exit.append(exit)

    # -- conveniences --------------------------------------------------------------------------
    @property
    def cpus(self) -> list[Cpu]:
        return self.sim.cpus

    @property
    def now_ns(self) -> int:
        """Global virtual time: the clock of the earliest CPU that has run so far."""
        return self.sim.now_ns

    def new_lock(self, name: str, kind: LockKind) -> Lock:
        """A lock with a per-machine address, so reports are the same on every run."""
        self._lock_addr += 0x40
        return Lock(name, kind, self._lock_addr)

    def trace(self, task: Task, name: str, fields: str, **kw: Any) -> None:
        """Emit a tracepoint from ``task`` (callers test its key, ``tracer.tp.NAME``, first)."""
        self.tracer.emit(name, task.now_ns, task.cpu.id, task.comm, task.pid, fields,
                         ctx=task, **kw)

    def _cpu_flags(self, cpu: int) -> str:
        """Latency flags for an event emitted without a task: what runs on ``cpu`` now."""
        current = self.sim.cpus[cpu].current
        return lat_flags(current) if current is not None else NO_FLAGS

    def _trace_splat(self, splat: Splat) -> None:
        self.vmstat.inc(f"splat_{splat.kind}")
        # The trace shows what the kernel printed, not what lockdep or the rate limit swallowed.
        if splat.printed and self.tracer.tp.splat:
            self.tracer.emit(
                "splat", splat.time_ns, splat.cpu, splat.comm, splat.pid,
                f"{splat.title} lock={splat.lock_name or '-'} at {splat.ip}",
            )

    def splat_counts(self) -> dict[str, int]:
        """Violations per kind, every one the checks saw ("would report")."""
        return {k: self.locks.counts.get(k, 0) for k in SPLAT_KINDS}

    def splat_statistics(self) -> LockStats:
        """Would-report counts and what the kernel printed (``reports_printed``,
        ``first_report``): see :class:`rcukit.locking.checker.LockStats`."""
        return self.locks.statistics()
