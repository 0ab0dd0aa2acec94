"""``PageAlloc.alloc_page_nowait`` / ``free_page_nowait``: pcp hits and frees without a coroutine.

Kernel facts the shortcuts rest on (mm/page_alloc.c): an order-0 ``alloc_pages()`` above the low
watermark whose pcp list has a page takes it from the list head (``rmqueue_pcplist()`` ->
``__rmqueue_pcplist()``) and a ``free_pages()`` of an order-0 page below ``pcp->high`` puts it
on the list (``free_unref_page_commit()``) without anything that can sleep; from v6.0
(4b23a68f9536, "mm/page_alloc: protect PCP lists with a spinlock") both hold ``pcp->lock``
through ``pcp_spin_trylock()``, a trylock lockdep does not check the wait context of. So with
tracing off the lock model has only the acquisition and the release time to record, and the
shortcuts must leave exactly what :meth:`alloc_pages` and :meth:`free_pages` leave; everywhere
else they decline with nothing done.
"""

from __future__ import annotations

from typing import Any

import pytest
from simtools import cfg, mm_kernel, on_cpu

from rcukit.kernel import Kernel
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)


def _state(k: Kernel) -> tuple[Any, ...]:
    pa = k.mm.page_alloc
    locks = pa.pcp_locks or []
    return (
        k.mm.nr_free_pages(),
        [(p.count, [list(lst) for lst in p.lists]) for p in pa.pcps],
        [c.local_ns for c in k.sim.cpus],
        k.vmstat.snapshot(),
        [(lock.acquisitions, lock.free_at_ns, lock.owner) for lock in locks],
    )


@pytest.mark.parametrize("profile", ["v5.9", "v6.1", "v6.5"])
async def test_nowait_leaves_what_alloc_pages_and_free_pages_leave(
    autojump_clock: Any, profile: str
) -> None:
    """Pages, pcp lists, clocks, vmstat and the pcp locks' statistics come out the same when
    each allocation and free first tries the shortcut; the shortcuts serve most of them and
    decline the ones that need the pcp refill or drain."""
    config = cfg(**{"kvfree.profile": profile})
    async with mm_kernel(config) as a, mm_kernel(config) as b:
        n = 3 * b.mm.page_alloc.pcps[0].high

        async def reference(task: Task) -> list[int]:
            pfns: list[int] = []
            for _ in range(n):
                pfn = await a.mm.alloc_pages(task, KERNEL, 0)
                assert pfn is not None
                pfns.append(pfn)
            for pfn in pfns:
                await a.mm.free_pages(task, pfn, 0)
            return pfns

        served = [0, 0]

        async def shortcut(task: Task) -> list[int]:
            pa = b.mm.page_alloc
            pfns: list[int] = []
            for _ in range(n):
                pfn = pa.alloc_page_nowait(task, KERNEL)
                if pfn is None:
                    pfn = await b.mm.alloc_pages(task, KERNEL, 0)
                else:
                    served[0] += 1
                assert pfn is not None
                pfns.append(pfn)
            for pfn in pfns:
                if pa.free_page_nowait(task, pfn):
                    served[1] += 1
                else:
                    await b.mm.free_pages(task, pfn, 0)
            return pfns

        assert await on_cpu(a, reference) == await on_cpu(b, shortcut)
        assert _state(a) == _state(b)
        assert n // 2 < served[0] < n and n // 2 < served[1] < n


async def test_nowait_declines_a_busy_pcp_lock_with_nothing_done(autojump_clock: Any) -> None:
    """v6.0+: with ``pcp->lock`` held (or released later than the caller's clock) the
    shortcuts decline and change nothing, so :meth:`alloc_pages` takes its own path (the
    trylock fails and ``rmqueue_buddy()`` serves it under ``zone->lock``)."""
    async with mm_kernel(cfg(**{"kvfree.profile": "v6.1"})) as k:

        async def go(task: Task) -> None:
            pa = k.mm.page_alloc
            pfn = await k.mm.alloc_pages(task, KERNEL, 0)  # fills the pcp list
            assert pfn is not None
            assert pa.pcp_locks is not None
            lock = pa.pcp_locks[task.cpu.id]
            lock.free_at_ns = task.cpu.local_ns + 1_000
            before = _state(k)
            assert pa.alloc_page_nowait(task, KERNEL) is None
            assert not pa.free_page_nowait(task, pfn)
            assert _state(k) == before

        await on_cpu(k, go)
