"""What the application domain's tests share: a reader that holds a grace period, a background
synchronize_rcu(), a release target that records what it frees, and running one test body on
both event loops (``on_both_loops`` + ``run_on``) with a worker thread of that loop's own kind.

Importable from every test folder (``conftest.py`` puts this directory on ``sys.path``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
import pytest
import sniffio
import trio

from rcukit.app import RcuDomain

T = TypeVar("T")

#: The event loops the application domain supports.
BACKENDS = ("asyncio", "trio")
#: ``@on_both_loops`` gives a (synchronous) test a ``backend`` argument to pass to ``run_on``.
on_both_loops = pytest.mark.parametrize("backend", BACKENDS)


def run_on(backend: str, fn: Callable[[], Awaitable[T]]) -> T:
    """``asyncio.run`` or ``trio.run`` of ``fn``, as an application would start it."""
    return anyio.run(fn, backend=backend)


async def in_worker_thread(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a worker thread of the running loop's own kind: ``trio.to_thread.run_sync``
    under Trio, ``asyncio.to_thread`` under asyncio."""
    if sniffio.current_async_library() == "trio":
        return await trio.to_thread.run_sync(fn, abandon_on_cancel=True)
    return await asyncio.to_thread(fn)


async def wait_blocked() -> None:
    """Let every other task run until it blocks (either loop)."""
    await anyio.wait_all_tasks_blocked()


async def hold_reader(rcu: RcuDomain, nursery: Any) -> anyio.Event:
    """Start a reader that stays inside ``rcu.read_lock()`` until the returned event is set, and
    return once it is inside: any grace period started now waits for it (either loop)."""
    release = anyio.Event()

    async def reader() -> None:
        with rcu.read_lock():
            await release.wait()

    nursery.start_soon(reader)
    await anyio.wait_all_tasks_blocked()
    return release


async def start_sync(rcu: RcuDomain, nursery: Any) -> anyio.Event:
    """Start a synchronize_rcu() in the background and let it run until it blocks; the returned
    event is set when it returns."""
    done = anyio.Event()

    async def sync() -> None:
        await rcu.synchronize_rcu()
        done.set()

    nursery.start_soon(sync)
    await anyio.wait_all_tasks_blocked()
    return done


def pending(rcu: RcuDomain) -> int:
    """What counts against ``max_pending``: queued callbacks plus queued kvfree_rcu objects."""
    s = rcu.statistics()
    return s.callbacks_pending + s.kvfree_pending


class SpyPool:
    """A release target with free_bulk() that records every call."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.freed: list[Any] = []
        self.event = anyio.Event()

    def free_bulk(self, objs: list[Any]) -> None:
        self.calls.append(len(objs))
        self.freed.extend(objs)
        self.event.set()
