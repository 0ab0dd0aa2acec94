"""A kernel with the mm subsystem alone (no RCU, no kvfree_rcu), for the allocator's own tests.

The page allocator must not depend on RCU or kvfree_rcu, and its tests count pcp refills, zone
lock acquisitions and kswapd wake-ups exactly; kvfree_rcu's boot-time page-cache prefill would
add its own. So these tests boot only mm (the pattern of ``tests/_rcu_kernel.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.mm.mm import Mm


class MmOnlyKernel(Kernel):
    """A :class:`Kernel` whose only subsystem is :class:`Mm`."""

    mm: Mm

    def _init_subsystems(self) -> None:
        self.mm = Mm(self)
        self._subsystems.append(self.mm)
        self.rcu = None
        self.kvfree = None


@asynccontextmanager
async def mm_kernel(
    config: KernelConfig | None = None, **overrides: Any
) -> AsyncIterator[MmOnlyKernel]:
    """Boot an :class:`MmOnlyKernel` in a nursery, like :func:`rcukit.boot`."""
    cfg = config or KernelConfig()
    if overrides:
        cfg = cfg.replace(**overrides)
    k = MmOnlyKernel(cfg)
    async with trio.open_nursery() as nursery:
        k._start(nursery)
        try:
            yield k
        finally:
            nursery.cancel_scope.cancel()


def pa(k: Kernel) -> Mm:
    """``k.mm`` with its type (the Kernel types it loosely while subsystems come up)."""
    mm = k.mm
    assert isinstance(mm, Mm)
    return mm
