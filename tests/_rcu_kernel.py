"""A kernel with the RCU engine alone (no mm, no kvfree_rcu), for the RCU engine's own tests.

The GP engine must not depend on the allocator or on kvfree_rcu, so its tests boot only it:
what they count (grace periods, hand-offs, callbacks) is then RCU's alone.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import trio
import trio.testing

from rcukit.kernel import Kernel, Subsystems, boot

T = TypeVar("T")

RCU_ONLY = Subsystems(mm=None, kvfree=False)


@asynccontextmanager
async def rcu_kernel(**overrides: Any) -> AsyncIterator[Kernel]:
    """Boot a kernel whose only subsystem is RCU, like :func:`rcukit.sim.boot`."""
    async with boot(subsystems=RCU_ONLY, **overrides) as k:
        yield k


def run_sim(body: Callable[[Kernel], Awaitable[T]], **overrides: Any) -> T:
    """Run ``body(kernel)`` in its own ``trio.run`` on a fresh MockClock (for hypothesis)."""
    box: list[T] = []

    async def main() -> None:
        async with rcu_kernel(**overrides) as k:
            box.append(await body(k))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box[0]
