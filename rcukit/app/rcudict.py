"""``RcuDict``: a copy-on-write mapping for the most common RCU case, config and routing tables.

Each version of the table is a plain ``dict`` that is never modified once published. Readers
look keys up in the current version without locking; an update copies the current version,
changes the copy, publishes it with :meth:`RcuPointer.compare_and_set` and hands the old
version to ``kvfree_rcu``, so old versions are retired in bulk, a block of them per grace
period, exactly as the kernel retires an RCU-protected table with ``kfree_rcu()`` after
``rcu_replace_pointer()``. Updates are cheap to get right and O(len) to make: the shape suits
read-mostly tables (a route table swapped a few times a second, read thousands of times).

A single lookup (``table[key]``, ``key in table``, ``table.get(key)``, ``len(table)``) reads one
version and cannot observe a half-made update, inside a read section or not. Several lookups
that must agree with each other take one version: ``with rcu.read_lock(): snap =
table.snapshot()`` (checked in debug mode, like :meth:`RcuPointer.dereference`).
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

from rcukit.app.pointer import RcuPointer

if TYPE_CHECKING:
    from rcukit.app.domain import RcuDomain

__all__ = ["RcuDict"]

K = TypeVar("K")
V = TypeVar("V")


class DropVersions:
    """The release target of retired versions: one ``free_bulk`` call per block, dropping the
    references (a version some task still holds stays alive for it, as Python objects do)."""

    @staticmethod
    def free_bulk(versions: list[Any]) -> None:
        return None


class RcuDict(Mapping[K, V]):
    """A read-mostly mapping whose updates publish a new version (see the module docstring).

    ``release``: where retired versions go (default: drop them, in bulk); pass a function such
    as ``Table.teardown`` to tear each version down once no reader can hold it.
    """

    __slots__ = ("_ptr", "_release", "rcu")

    def __init__(
        self,
        rcu: RcuDomain,
        initial: Mapping[K, V] | Iterable[tuple[K, V]] = (),
        *,
        release: Any = DropVersions,
    ) -> None:
        self.rcu = rcu
        self._ptr: RcuPointer[dict[K, V]] = RcuPointer(rcu, dict(initial))
        self._release = release

    def __repr__(self) -> str:
        return f"<RcuDict {self._ptr.dereference_protected()!r}>"

    # ---------------------------------------------------------------- read side

    def __getitem__(self, key: K) -> V:
        return self._ptr._value[key]

    def __contains__(self, key: object) -> bool:
        return key in self._ptr._value

    def __iter__(self) -> Iterator[K]:
        return iter(self._ptr._value)  # one version, never modified: safe to iterate

    def __len__(self) -> int:
        return len(self._ptr._value)

    def get(self, key: K, default: Any = None) -> Any:
        return self._ptr._value.get(key, default)

    def snapshot(self) -> Mapping[K, V]:
        """The current version, read-only, for lookups that must agree (``rcu_dereference``).

        Use it inside ``with rcu.read_lock():``; debug mode raises outside a read section.
        """
        return MappingProxyType(self._ptr.dereference())

    # ---------------------------------------------------------------- update side

    def _publish(self, change: Callable[[dict[K, V]], None]) -> None:
        """Copy, change, compare-and-set (again on a race with a thread), retire the old."""
        ptr = self._ptr
        while True:
            old = ptr._value
            new = dict(old)
            change(new)
            if ptr.compare_and_set(old, new):
                self.rcu.kvfree_rcu(old, self._release)
                return

    def set(self, key: K, value: V) -> None:
        """Publish a version with ``key`` mapped to ``value``; retire the old one."""

        def change(d: dict[K, V]) -> None:
            d[key] = value

        self._publish(change)

    def set_many(self, items: Mapping[K, V] | Iterable[tuple[K, V]]) -> None:
        """Publish one version with every item of ``items`` set (one copy, one retirement)."""
        items = dict(items)
        self._publish(lambda d: d.update(items))

    def delete(self, key: K) -> None:
        """Publish a version without ``key`` (``KeyError``, nothing published, if absent)."""

        def change(d: dict[K, V]) -> None:
            del d[key]

        self._publish(change)

    def replace(self, items: Mapping[K, V] | Iterable[tuple[K, V]]) -> None:
        """Publish ``items`` as the whole new version (a reload)."""
        new = dict(items)
        ptr = self._ptr
        while True:
            old = ptr._value
            if ptr.compare_and_set(old, new):
                self.rcu.kvfree_rcu(old, self._release)
                return

    async def update(self, fn: Callable[[dict[K, V]], Awaitable[None] | None]) -> None:
        """An update that awaits: ``fn`` changes a private copy of the current version, in
        place, and may await; the copy is published only if no other update was published in
        the meantime, else ``fn`` runs again on a fresh copy (no write is lost). The old
        version is retired with ``kvfree_rcu_wait`` (waits at the pending cap)."""
        ptr = self._ptr
        while True:
            old = ptr._value
            new = dict(old)
            res = fn(new)
            if inspect.isawaitable(res):
                await res
            if ptr.compare_and_set(old, new):
                await self.rcu.kvfree_rcu_wait(old, self._release)
                return
