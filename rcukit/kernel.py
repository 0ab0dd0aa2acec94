"""The Kernel: one simulated machine, its subsystems and kthreads, and the runners.

There is no module-level state: everything a simulation touches hangs off its :class:`Kernel`,
so two kernels in one process (or one test after another) never see each other.
"""

from __future__ import annotations

import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import attrs
import trio
import trio.testing

from rcukit.config import KernelConfig, config_to_dict
from rcukit.locking.checker import LockChecker
from rcukit.locking.locks import Lock, LockKind
from rcukit.locking.splat import SPLAT_KINDS, Splat
from rcukit.sched.sim import Cpu, Simulator, Task
from rcukit.trace.events import Counters, Tracer
from rcukit.wq import Workqueue, wq_worker_sleeping

if TYPE_CHECKING:
    from rcukit.rcu.kvfree.variants import BlockPageSource

T = TypeVar("T")


class _Hooks:
    """Forwards scheduler events to the subsystems that care (RCU)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel

    def on_tick(self, task: Task, voluntary: bool) -> None:
        for h in self.kernel._tick_hooks:
            h(task, voluntary)

    def on_context_switch(self, prev: Task) -> None:
        for h in self.kernel._switch_hooks:
            h(prev)

    def on_idle_enter(self, cpu: Cpu) -> None:
        for h in self.kernel._idle_enter_hooks:
            h(cpu)

    def on_idle_exit(self, cpu: Cpu) -> None:
        for h in self.kernel._idle_exit_hooks:
            h(cpu)


class Kernel:
    """A booted simulated kernel. Create it with :func:`boot` or :func:`simulate`."""

    def __init__(
        self,
        config: KernelConfig | None = None,
        *,
        block_sources: Iterable[BlockPageSource] = (),
    ) -> None:
        self.config = config or KernelConfig()
        cfg = self.config
        self._tick_hooks: list[Callable[[Task, bool], None]] = []
        self._switch_hooks: list[Callable[[Task], None]] = []
        self._idle_enter_hooks: list[Callable[[Cpu], None]] = []
        self._idle_exit_hooks: list[Callable[[Cpu], None]] = []
        self.sim = Simulator(cfg.nr_cpus, cfg.tick_ns, _Hooks(self))
        self.sim.switch_cost_ns = cfg.cost.context_switch_ns
        self.locks = LockChecker(
            prove_raw_lock_nesting=cfg.prove_raw_lock_nesting,
            preempt_rt=cfg.preempt_rt,
            strict=cfg.strict_splats,
            release=cfg.release,
            out=sys.stderr if cfg.print_splats else None,
        )
        self.tracer = Tracer()
        self.vmstat = Counters()
        self.rng = random.Random(cfg.seed)
        self.system_wq = Workqueue(self, "events")
        self.system_highpri_wq = Workqueue(self, "events_highpri", highpri=True)
        self.system_unbound_wq = Workqueue(self, "events_unbound")
        self.locks.listeners.append(self._trace_splat)
        self.add_switch_hook(wq_worker_sleeping)
        self._subsystems: list[Any] = []
        self._started = False
        self._lock_addr = 0xFFFF888003A00000
        #: The user's allocator-core variants, handed to kvfree_rcu's registry.
        self._block_sources = tuple(block_sources)
        self._init_subsystems()

    # -- subsystems ------------------------------------------------------------------------
    def _init_subsystems(self) -> None:
        """Boot order as in start_kernel(): mm, then RCU, then kvfree_rcu on top of both."""
        try:
            from rcukit.mm.page_alloc import PageAllocator
        except ImportError:  # pragma: no cover - during bring-up of the mm subsystem
            self.mm: Any = None
        else:
            self.mm = PageAllocator(self)
            self._subsystems.append(self.mm)
        try:
            from rcukit.rcu.tree import RcuState
        except ImportError:  # pragma: no cover - during bring-up of the RCU engine
            self.rcu: Any = None
        else:
            self.rcu = RcuState(self)
            self._subsystems.append(self.rcu)
        try:
            from rcukit.rcu.kvfree import BlockSources, KvfreeRcu
        except ImportError:  # pragma: no cover - during bring-up of kvfree_rcu
            self.kvfree: Any = None
        else:
            if self.mm is not None and self.rcu is not None:
                self.kvfree = KvfreeRcu(self, BlockSources(self._block_sources))
                self._subsystems.append(self.kvfree)
            else:
                self.kvfree = None

    def add_tick_hook(self, fn: Callable[[Task, bool], None]) -> None:
        self._tick_hooks.append(fn)

    def add_switch_hook(self, fn: Callable[[Task], None]) -> None:
        self._switch_hooks.append(fn)

    def add_idle_hooks(self, enter: Callable[[Cpu], None], exit: Callable[[Cpu], None]) -> None:
        self._idle_enter_hooks.append(enter)
        self._idle_exit_hooks.append(exit)

    # -- conveniences --------------------------------------------------------------------------
    @property
    def cpus(self) -> list[Cpu]:
        return self.sim.cpus

    @property
    def now_ns(self) -> int:
        """Global virtual time: the clock of the earliest CPU that has run so far."""
        return self.sim.now_ns

    @property
    def jiffies(self) -> int:
        return self.sim.now_ns // self.config.tick_ns

    def new_lock(self, name: str, kind: LockKind) -> Lock:
        """A lock with a per-kernel address, so reports are the same on every run."""
        self._lock_addr += 0x40
        return Lock(name, kind, self._lock_addr)

    def trace(self, task: Task, name: str, fields: str, **kw: Any) -> None:
        """Emit a tracepoint from ``task`` (callers test ``tracer.on`` first)."""
        self.tracer.emit(name, task.now_ns, task.cpu.id, task.comm, task.pid, fields, **kw)

    def _trace_splat(self, splat: Splat) -> None:
        self.vmstat.inc(f"splat_{splat.kind}")
        if self.tracer.on:
            self.tracer.emit(
                "splat", splat.time_ns, splat.cpu, splat.comm, splat.pid,
                f"{splat.title} lock={splat.lock_name or '-'} at {splat.ip}",
            )

    def splat_counts(self) -> dict[str, int]:
        return {k: self.locks.counts.get(k, 0) for k in SPLAT_KINDS}

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self, nursery: trio.Nursery) -> None:
        self.sim.attach(nursery)
        for sub in self._subsystems:
            start = getattr(sub, "start", None)
            if start is not None:
                start()
        self._started = True

    def spawn(
        self,
        fn: Callable[[Task], Awaitable[object]],
        cpu: int = 0,
        name: str | None = None,
        *,
        workload: bool = True,
    ) -> Task:
        """Start a simulated task on ``cpu``. Workload tasks are what :meth:`run` waits for."""
        if not self._started:
            raise RuntimeError("the kernel is not booted; use `async with rcukit.boot(...)`")
        comm = name if name is not None else str(getattr(fn, "__name__", "task"))
        return self.sim.spawn(fn, cpu, comm, workload=workload)

    async def run(self) -> None:
        """Drive the simulation until every workload task has returned."""
        if self.sim.live_workload:
            await self.sim.drive()

    async def run_on_cpus(
        self, fn: Callable[[Task], Awaitable[T]], cpus: Sequence[int] | None = None
    ) -> list[T]:
        """Run ``fn`` once on each of ``cpus`` (default all) and return their results."""
        which = list(range(self.config.nr_cpus)) if cpus is None else list(cpus)
        base = str(getattr(fn, "__name__", "work"))
        tasks = [self.spawn(fn, c, f"{base}/{c}") for c in which]
        await self.run()
        return [t.result for t in tasks]  # type: ignore[misc]


@asynccontextmanager
async def boot(
    config: KernelConfig | None = None,
    *,
    block_sources: Iterable[BlockPageSource] = (),
    **overrides: Any,
) -> AsyncIterator[Kernel]:
    """Boot a simulated kernel in a nursery; kthreads stop when the block exits.

    ``block_sources`` are the user's allocator-core variants (``BlockPageSource``), selectable
    by name in ``config.kvfree.variant`` alongside the built-ins. ``overrides`` are config
    fields, dotted for nested ones (``**{"mm.pcp_batch": 31}``).
    """
    cfg = config or KernelConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    kernel = Kernel(cfg, block_sources=block_sources)
    async with trio.open_nursery() as nursery:
        kernel._start(nursery)
        try:
            yield kernel
        finally:
            nursery.cancel_scope.cancel()


@attrs.frozen
class SimResult(Generic[T]):
    """What :func:`simulate` returns: per-CPU results and the kernel's counters at the end."""

    config: KernelConfig
    results: list[T]
    now_ns: int
    splats: tuple[Splat, ...]
    splat_counts: dict[str, int]
    vmstat: dict[str, int]
    handoffs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "now_ns": self.now_ns,
            "splats": self.splat_counts,
            "vmstat": self.vmstat,
        }


def run_sim(main: Callable[[], Awaitable[None]]) -> None:
    """``trio.run(main)`` on a MockClock; a lone error comes out bare, not in an ExceptionGroup."""
    try:
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    except BaseExceptionGroup as eg:
        errors = eg.exceptions
        while len(errors) == 1 and isinstance(errors[0], BaseExceptionGroup):
            errors = errors[0].exceptions
        if len(errors) == 1:
            raise errors[0] from None
        raise


def simulate(
    workload: Callable[[Task], Awaitable[T]],
    config: KernelConfig | None = None,
    *,
    cpus: Sequence[int] | None = None,
    setup: Callable[[Kernel], None] | None = None,
) -> SimResult[T]:
    """Run ``workload`` on each CPU of a fresh kernel on virtual time and return the result.

    Runs its own ``trio.run`` under ``MockClock(autojump_threshold=0)``; from inside Trio use
    :func:`boot` and :meth:`Kernel.run_on_cpus` instead.
    """
    cfg = config or KernelConfig()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with boot(cfg) as kernel:
            if setup is not None:
                setup(kernel)
            box["results"] = await kernel.run_on_cpus(workload, cpus)
            box["kernel"] = kernel

    run_sim(main)
    k: Kernel = box["kernel"]
    return SimResult(
        config=cfg,
        results=box["results"],
        now_ns=k.sim.max_local_ns(),
        splats=tuple(k.locks.splats),
        splat_counts=k.splat_counts(),
        vmstat=k.vmstat.snapshot(),
        handoffs=k.sim.handoffs,
    )
