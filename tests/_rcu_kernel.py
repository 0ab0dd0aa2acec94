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

from rcukit.config import KernelConfig
from rcukit.kernel import Kernel
from rcukit.rcu.tree import RcuState

T = TypeVar("T")


class RcuOnlyKernel(Kernel):
    """A :class:`Kernel` whose only subsystem is :class:`RcuState`."""

    rcu: RcuState

    def _init_subsystems(self) -> None:
        self.mm = None
        self.rcu = RcuState(self)
        self._subsystems.append(self.rcu)
        self.kvfree = None


@asynccontextmanager
async def rcu_kernel(**overrides: Any) -> AsyncIterator[RcuOnlyKernel]:
    """Boot an :class:`RcuOnlyKernel` in a nursery, like :func:`rcukit.boot`."""
    k = RcuOnlyKernel(KernelConfig().replace(**overrides) if overrides else KernelConfig())
    async with trio.open_nursery() as nursery:
        k._start(nursery)
        try:
            yield k
        finally:
            nursery.cancel_scope.cancel()


def run_sim(body: Callable[[RcuOnlyKernel], Awaitable[T]], **overrides: Any) -> T:
    """Run ``body(kernel)`` in its own ``trio.run`` on a fresh MockClock (for hypothesis)."""
    box: list[T] = []

    async def main() -> None:
        async with rcu_kernel(**overrides) as k:
            box.append(await body(k))

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return box[0]
