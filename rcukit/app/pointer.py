"""``RcuPointer``: the published reference readers follow (``rcu_assign_pointer`` and co.).

In C the pointer primitives exist for memory ordering; an event loop runs one task at a time (and
the GIL orders worker threads), so ordering is free and what is left is the *discipline*: updaters
publish with :meth:`assign` and retire the old value after a grace period; readers fetch with
:meth:`dereference` inside a read section. In debug mode :meth:`dereference` checks that discipline
the way ``rcu_dereference_check()`` does under lockdep, and raises outside a read section (an online
QSBR worker counts as inside one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

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

    def dereference(self) -> T:
        """The current value, for a reader (``rcu_dereference``); debug mode checks the section."""
        check = self._check
        if check is not None:
            check("RcuPointer.dereference()")
        return self._value

    def dereference_protected(self) -> T:
        """The current value, for an updater that excludes other updaters by its own means."""
        return self._value
