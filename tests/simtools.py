"""What the simulator's tests share: partial kernels, a one-CPU runner, time units, paths.

Importable from every test folder (``conftest.py`` puts this directory on ``sys.path``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import trio
import trio.testing

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, Subsystems, boot
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
    return k.mm


@asynccontextmanager
async def rcu_kernel(**overrides: Any) -> AsyncIterator[Kernel]:
    """Boot a kernel whose only subsystem is RCU, like :func:`rcukit.sim.boot`."""
    async with boot(subsystems=RCU_ONLY, **overrides) as k:
        yield k


def run_sim(body: Callable[[Kernel], Awaitable[T]], **overrides: Any) -> T:
    """Run ``body(kernel)`` on an RCU-only kernel in its own ``trio.run`` on a fresh MockClock
    (for hypothesis, whose examples cannot share one event loop)."""
    box: list[T] = []

    async def main() -> None:
        async with rcu_kernel(**overrides) as k:
            box.append(await body(k))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box[0]
