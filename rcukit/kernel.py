"""The Kernel: a machine and the subsystems booted on it, in ``start_kernel()`` order.

Subsystems are typed and built here, each from the :class:`~rcukit.machine.Machine` and the
subsystems it depends on (kvfree_rcu is built on mm and RCU), so nothing below this module
imports it. :class:`Subsystems` says which to boot: tests of one subsystem boot it alone, and a
test can swap in its own class (torture's self-test boots a deliberately broken RCU).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any, Generic, TypeVar

import attrs
import trio
import trio.testing

from rcukit.config import KernelConfig, config_to_dict
from rcukit.errors import SimulationError
from rcukit.locking.splat import Splat
from rcukit.machine import Machine
from rcukit.mm.mm import Mm
from rcukit.panic import BugReport
from rcukit.rcu.kvfree.sim import KvfreeRcu
from rcukit.rcu.kvfree.variants import BlockPageSource, BlockSources
from rcukit.rcu.tree import RcuState
from rcukit.sched.sim import Task

T = TypeVar("T")


@attrs.frozen
class Subsystems:
    """Which subsystems a kernel boots, and with which classes.

    The default is the whole kernel. ``Subsystems(rcu=None, kvfree=False)`` is the page
    allocator alone, ``Subsystems(mm=None, kvfree=False)`` the RCU engine alone; kvfree_rcu
    needs both.
    """

    mm: Callable[[Machine], Mm] | None = Mm
    rcu: Callable[[Machine], RcuState] | None = RcuState
    kvfree: bool = True

    def __attrs_post_init__(self) -> None:
        if self.kvfree and (self.mm is None or self.rcu is None):
            raise SimulationError("kvfree_rcu is built on mm and RCU: boot both, or kvfree=False")


ALL_SUBSYSTEMS = Subsystems()


def _absent(name: str) -> SimulationError:
    return SimulationError(
        f"this kernel was booted without {name} (see rcukit.kernel.Subsystems)"
    )


class Kernel(Machine):
    """A booted simulated kernel. Create it with :func:`boot` or :func:`simulate`."""

    def __init__(
        self,
        config: KernelConfig | None = None,
        subsystems: Subsystems = ALL_SUBSYSTEMS,
        *,
        block_sources: Iterable[BlockPageSource] = (),
    ) -> None:
        super().__init__(config)
        self.subsystems = subsystems
        self._started = False
        self._mm = subsystems.mm(self) if subsystems.mm is not None else None
        self._rcu = subsystems.rcu(self) if subsystems.rcu is not None else None
        self._kvfree = None
        if self._mm is not None and self._rcu is not None:
            # CPU hotplug is RCU's (cpu_down/cpu_up); SLUB flushes a dead CPU's slabs
            self._rcu.add_hotplug_callback(self._mm.slab.cpu_hotplug)
        if subsystems.kvfree:
            assert self._mm is not None and self._rcu is not None  # Subsystems checked it
            self._kvfree = KvfreeRcu(self, self._mm, self._rcu, BlockSources(block_sources))

    @property
    def mm(self) -> Mm:
        """The memory-management subsystem (page allocator, slab, vmalloc, kswapd)."""
        if self._mm is None:
            raise _absent("mm")
        return self._mm

    @property
    def rcu(self) -> RcuState:
        """Tree RCU: grace periods, callbacks, the polled API."""
        if self._rcu is None:
            raise _absent("rcu")
        return self._rcu

    @property
    def kvfree(self) -> KvfreeRcu:
        """kvfree_rcu(): per-CPU krcp, blocks, the monitor, bulk reclaim."""
        if self._kvfree is None:
            raise _absent("kvfree")
        return self._kvfree

    # -- lifecycle -----------------------------------------------------------------------------
    def _start(self, nursery: trio.Nursery) -> None:
        self.sim.attach(nursery)
        # start_kernel() order: mm, then RCU, then kvfree_rcu on top of both.
        if self._mm is not None:
            self._mm.start()
        if self._rcu is not None:
            self._rcu.start()
        if self._kvfree is not None:
            self._kvfree.start()
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
            raise RuntimeError("the kernel is not booted; use `async with rcukit.sim.boot(...)`")
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
    subsystems: Subsystems = ALL_SUBSYSTEMS,
    block_sources: Iterable[BlockPageSource] = (),
    **overrides: Any,
) -> AsyncIterator[Kernel]:
    """Boot a simulated kernel in a nursery; kthreads stop when the block exits.

    A bug the kernel finds in its own kthreads, workers or RCU callbacks (a double free in
    the reclaim's bulk free, a callback that raises, an unbalanced ``rcu_read_unlock()``) is
    reported, taints the kernel (``kernel.panic``) and the run goes on; with
    ``panic_on_warn=True`` the first one raises :class:`rcukit.errors.KernelPanic` out of the
    block.

    ``overrides`` are config fields, dotted for nested ones (``**{"mm.pcp_batch": 31}``).
    ``block_sources`` are the user's allocator-core variants (``BlockPageSource``), selectable
    by name in ``kvfree.variant`` beside the built-ins.
    """
    cfg = config or KernelConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    kernel = Kernel(cfg, subsystems, block_sources=block_sources)
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
    #: The taint flags at the end (``"BW"``...; "" untainted) and every bug report the kernel
    #: found in its kthreads, workers and callbacks (:mod:`rcukit.panic`).
    taint: str = ""
    reports: tuple[BugReport, ...] = ()

    def to_json(self) -> dict[str, Any]:
        return {
            "config": config_to_dict(self.config),
            "now_ns": self.now_ns,
            "splats": self.splat_counts,
            "vmstat": self.vmstat,
            "taint": self.taint,
            "reports": [r.to_json() for r in self.reports],
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
    subsystems: Subsystems = ALL_SUBSYSTEMS,
    block_sources: Iterable[BlockPageSource] = (),
) -> SimResult[T]:
    """Run ``workload`` on each CPU of a fresh kernel on virtual time and return the result.

    Runs its own ``trio.run`` under ``MockClock(autojump_threshold=0)``; from inside Trio use
    :func:`boot` and :meth:`Kernel.run_on_cpus` instead. ``subsystems`` and ``block_sources``
    are as for :func:`boot`.
    """
    cfg = config or KernelConfig()
    box: dict[str, Any] = {}

    async def main() -> None:
        async with boot(cfg, subsystems=subsystems, block_sources=block_sources) as kernel:
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
        taint=k.panic.taint,
        reports=tuple(k.panic.reports),
    )
