"""``RcuPointer``: the published reference readers follow (``rcu_assign_pointer`` and co.).

In C the pointer primitives exist for memory ordering; an event loop runs one task at a time (and
the GIL orders worker threads), so ordering is free and what is left is the *discipline*: updaters
publish with :meth:`assign` and retire the old value after a grace period; readers fetch with
:meth:`dereference` inside a read section. In debug mode :meth:`dereference` checks that discipline
the way ``rcu_dereference_check()`` does under lockdep, and raises outside a read section (an online
QSBR worker counts as inside one).

Updaters that await (build the new value from the old, with I/O in between) would lose each
other's writes with a plain :meth:`~RcuPointer.assign`: :meth:`~RcuPointer.compare_and_set`
publishes only if the value is still the one the update started from (the kernel's
``cmpxchg`` on an RCU pointer, as in ``rcu_replace_pointer`` under a lock-free updater), and
:meth:`~RcuPointer.update` is the retry loop around it, retiring the old value for you.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from rcukit.app.kvfree import check_kvfree_size

if TYPE_CHECKING:
    from rcukit.app.domain import RcuDomain

__all__ = ["RcuPointer"]

T = TypeVar("T")


class RcuPointer(Generic[T]):
    """An RCU-protected reference belonging to one domain."""

    __slots__ = ("_check", "_value", "rcu")

    def __init__(self, rcu: RcuDomain, value: T) -> None:
        self.rcu = rcu
        self._value = value
        self._check: Callable[[str], None] | None = rcu._reader_check if rcu.debug else None

    def __repr__(self) -> str:
        return f"<RcuPointer -> {type(self._value).__name__} at {id(self._value):#x}>"

    def assign(self, new: T) -> T:
        """Publish ``new`` (``rcu_replace_pointer``) and return the old value to retire.

        Readers that started before this call may still hold the old value: release it with
        ``rcu.kvfree_rcu(old)``, ``rcu.call_rcu(...)`` or after ``await rcu.synchronize_rcu()``.
        Safe from worker threads too: the swap makes no call, so under the GIL no other thread
        runs between the read of the old value and the store of the new one.
        """
        old = self._value
        self._value = new
        return old

    def compare_and_set(self, expected: T, new: T) -> bool:
        """Publish ``new`` only if the current value *is* ``expected``; say whether it did.

        The caller retires ``expected`` after a successful swap (it is the old value). Like
        :meth:`assign`, the check and the store make no call, so they are one step under the
        GIL: safe from worker threads, and never interleaved with another task's swap.
        """
        if self._value is not expected:
            return False
        self._value = new
        return True

    async def update(
        self, fn: Callable[[T], T | Awaitable[T]], release: Any = None, size: int | None = None
    ) -> T:
        """Read-copy-update with retries: publish ``fn(old)`` and retire ``old``; return the new.

        ``fn`` gets the current value and returns its replacement (it may be async, and may
        await: the swap is a :meth:`compare_and_set`, so if another updater published in the
        meantime ``fn`` runs again on the newer value, and no write is lost). ``fn`` must build
        a new value, not modify ``old`` (readers may hold it). The old value goes to
        ``rcu.kvfree_rcu_wait(old, release, size)``: released after a grace period, in bulk;
        at the pending cap this waits. Must not be called inside a read section. A bad ``size``
        raises before ``fn`` runs (after the swap it would leave ``old`` published over and
        never retired).
        """
        if size is not None:
            check_kvfree_size(size, "RcuPointer.update()")
        while True:
            old = self._value
            res = fn(old)
            new: T = await res if inspect.isawaitable(res) else res
            if self.compare_and_set(old, new):
                await self.rcu.kvfree_rcu_wait(old, release, size)
                return new

    def dereference(self) -> T:
        """The current value, for a reader (``rcu_dereference``); debug mode checks the section."""
        check = self._check
        if check is not None:
            check("RcuPointer.dereference()")
        return self._value

    def dereference_protected(self) -> T:
        """The current value, for an updater that excludes other updaters by its own means."""
        return self._value
