"""What the simulator's tests share: partial kernels, runners, configs, KASAN and source-line
probes, time units, paths.

Importable from every test folder (``conftest.py`` puts this directory on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import attrs

from rcukit.config import KernelConfig
from rcukit.errors import MemoryDebugError
from rcukit.kernel import ALL_SUBSYSTEMS, Kernel, Subsystems, boot
from rcukit.kernel import run_sim as run_on_mock_clock
from rcukit.mm.mm import Mm
from rcukit.sched.sim import Task

T = TypeVar("T")

US = 1_000
MS = 1_000_000
#: The checkout's root (demos/, examples/, benchmarks/) and the tests' data files.
ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"

#: The page allocator alone: its tests count pcp refills, zone-lock acquisitions and kswapd
#: wake-ups exactly, and kvfree_rcu's boot-time page-cache prefill would add its own.
MM_ONLY = Subsystems(rcu=None, kvfree=False)
#: The RCU engine alone: what its tests count (GPs, hand-offs, callbacks) is RCU's alone.
RCU_ONLY = Subsystems(mm=None, kvfree=False)
#: kvfree_rcu()'s block-allocator variants, in the order the RFC lists them.
VARIANTS = ("fast-try", "nowait", "gfp-zero", "raw-zone-lock", "page-cache", "nolock")


@attrs.define
class FakeCpu:
    """A CPU as the lock checker reads one: its id and local clock."""

    id: int = 0
    local_ns: int = 0


@attrs.define
class FakeLockContext:
    """The least a task needs to be ``current`` for the lock checker (its LockContext
    protocol), without a kernel: for tests of the checker's rules alone."""

    cpu: FakeCpu = attrs.field(factory=FakeCpu)
    pid: int = 1
    comm: str = "t"
    preempt_count: int = 0
    irqs_disabled: int = 0
    in_hardirq: int = 0
    in_softirq: int = 0
    rcu_read_nesting: int = 0
    rcu_blocked_reader: bool = False
    held_locks: list[Any] = attrs.field(factory=list)

    def in_atomic(self) -> bool:
        return bool(self.preempt_count or self.irqs_disabled or self.in_hardirq)


def cfg(**settings: Any) -> KernelConfig:
    """A two-CPU config with dotted ``settings`` (``**{"kvfree.profile": "v6.1"}``) replaced."""
    return KernelConfig(nr_cpus=2).replace(**settings)


def freed(k: Kernel, ptr: int) -> bool:
    """KASAN's answer: does touching ``ptr`` now report a use after free?"""
    try:
        k.mm.check_access(ptr)
    except MemoryDebugError:
        return True
    return False


def marker_line(path: str, marker: str) -> int:
    """Line number of the line in ``path`` ending in ``# marker``, so that tests checking a
    reported call site (``test_slab.py:123``) survive edits above it."""
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.rstrip().endswith(f"# {marker}"):
                return i
    raise AssertionError(marker)


async def on_cpu(k: Kernel, fn: Callable[[Task], Awaitable[T]], cpu: int = 0) -> T:
    """Run ``fn`` once on ``cpu`` of a booted kernel and return its result."""
    [r] = await k.run_on_cpus(fn, [cpu])
    return r


@asynccontextmanager
async def mm_kernel(config: KernelConfig | None = None, **overrides: Any) -> AsyncIterator[Kernel]:
    """Boot a kernel whose only subsystem is mm, like :func:`rcukit.sim.boot`."""
    async with boot(config, subsystems=MM_ONLY, **overrides) as k:
        yield k


def pa(k: Kernel) -> Mm:
    """The page allocator (and slab, vmalloc) of ``k``."""
    return k.mm


async def time_to_free(
    k: Kernel,
    alloc: Callable[[Task], Awaitable[int]],
    free: Callable[[Task, int], Awaitable[None]],
    free_bulk: Callable[[Task, list[int]], Awaitable[None]],
    *,
    n: int,
    bulk: bool,
) -> int:
    """On CPU 0, allocate ``n`` objects with ``alloc(task)``, then free them one by one with
    ``free`` or in one ``free_bulk`` call; the virtual nanoseconds the freeing took (for the
    kfree vs kfree_bulk and vfree vs vfree_bulk cost tests)."""

    async def work(task: Task) -> int:
        ptrs = [await alloc(task) for _ in range(n)]
        t0 = task.now_ns
        if bulk:
            await free_bulk(task, ptrs)
        else:
            for p in ptrs:
                await free(task, p)
        return task.now_ns - t0

    return await on_cpu(k, work)


@asynccontextmanager
async def rcu_kernel(**overrides: Any) -> AsyncIterator[Kernel]:
    """Boot a kernel whose only subsystem is RCU, like :func:`rcukit.sim.boot`."""
    async with boot(subsystems=RCU_ONLY, **overrides) as k:
        yield k


def boot_and_run(
    config: KernelConfig | None,
    body: Callable[[Kernel], Awaitable[T]],
    *,
    subsystems: Subsystems = ALL_SUBSYSTEMS,
    **overrides: Any,
) -> T:
    """Boot a kernel (a whole one unless ``subsystems`` says otherwise) in its own ``trio.run``
    on a fresh MockClock, run ``body(kernel)`` and return its result (a lone error comes out
    bare); for tests that are not async and for hypothesis, whose examples cannot share one
    event loop."""
    box: list[T] = []

    async def main() -> None:
        async with boot(config, subsystems=subsystems, **overrides) as k:
            box.append(await body(k))

    run_on_mock_clock(main)
    return box[0]


def run_sim(body: Callable[[Kernel], Awaitable[T]], **overrides: Any) -> T:
    """:func:`boot_and_run` on an RCU-only kernel with config ``overrides``."""
    return boot_and_run(None, body, subsystems=RCU_ONLY, **overrides)
