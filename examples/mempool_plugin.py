"""A user's allocator-core variant for kvfree_rcu(): a per-CPU mempool, as Hocko and Gorman
asked for in the RFC thread ("pre-allocate and refill from a clean context").

Run it beside the built-ins::

    PYTHONPATH=examples rcukit compare --plugin mempool_plugin:Mempool --variants mempool,nowait

A source is any object with ``name``, ``gfp``, ``description``, ``defers_to_worker`` and an
``async get_page(task, mm)`` that returns a page address or None. One source object serves
every kernel ``compare`` boots (one per row), so what belongs to a kernel is kept per ``mm``.
"""

from __future__ import annotations

import weakref

from rcukit.mm.mm import Mm
from rcukit.rcu.kvfree.variants import KVFREE_REFILL_GFP, MempoolSource
from rcukit.sim import Task


class Mempool:
    """Eight reserved pages per CPU, refilled by a worker with ``GFP_KERNEL|__GFP_NORETRY|...``.

    The reserve of each kernel is set aside the first time that kernel asks (boot memory, like
    a ``mempool_create()`` at boot), so the enqueue path never touches a lock; an empty reserve
    fails and kvfree_rcu() takes its fallback, the bound no reserve can escape.
    """

    name = "mempool"
    gfp = KVFREE_REFILL_GFP
    defers_to_worker = False

    def __init__(self, pages_per_cpu: int = 8) -> None:
        self.pages_per_cpu = pages_per_cpu
        self.description = f"per-CPU reserve of {pages_per_cpu} pages refilled by a worker"
        self._pools: weakref.WeakKeyDictionary[Mm, MempoolSource] = weakref.WeakKeyDictionary()

    async def get_page(self, task: Task, mm: Mm) -> int | None:
        pool = self._pools.get(mm)
        if pool is None:
            pool = self._pools[mm] = MempoolSource(mm, self.pages_per_cpu, name=self.name)
        return await pool.get_page(task, mm)
