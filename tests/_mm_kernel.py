"""A kernel with the mm subsystem alone (no RCU, no kvfree_rcu), for the allocator's own tests.

The page allocator must not depend on RCU or kvfree_rcu, and its tests count pcp refills, zone
lock acquisitions and kswapd wake-ups exactly; kvfree_rcu's boot-time page-cache prefill would
add its own. So these tests boot only mm.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, Subsystems, boot
from rcukit.mm.mm import Mm

MM_ONLY = Subsystems(rcu=None, kvfree=False)


@asynccontextmanager
async def mm_kernel(config: KernelConfig | None = None, **overrides: Any) -> AsyncIterator[Kernel]:
    """Boot a kernel whose only subsystem is mm, like :func:`rcukit.sim.boot`."""
    async with boot(config, subsystems=MM_ONLY, **overrides) as k:
        yield k


def pa(k: Kernel) -> Mm:
    return k.mm
