"""Fidelity of vmalloc/vfree (rcukit/mm/vmalloc.py) to 5.8 ``mm/vmalloc.c``.

Sources read: ``mm/vmalloc.c`` of the 5.x series (``vfree()``/``__vfree()`` with their
``in_interrupt()`` deferral, ``lazy_max_pages()``, ``__vmalloc_area_node()``'s ``fail:``
``warn_alloc()``), and x86-64's ``Documentation/x86/x86_64/mm.rst`` layout (4-level paging:
vmalloc/ioremap space ``ffffc90000000000`` - ``ffffe8ffffffffff``, 32 TB).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from simtools import cfg, mm_kernel, on_cpu

from rcukit.mm.vmalloc import VMALLOC_END, VMALLOC_START, is_vmalloc_addr
from rcukit.sched.sim import Task


@given(ptr=st.integers(0, (1 << 64) - 1))
def test_is_vmalloc_addr_is_the_x86_64_vmalloc_range(ptr: int) -> None:
    """``is_vmalloc_addr()`` (``include/linux/mm.h``): ``VMALLOC_START <= addr <
    VMALLOC_END``; on x86-64 with 4-level paging the range is ``0xffffc90000000000`` up to
    ``0xffffe8ffffffffff`` inclusive (32 TiB)."""
    assert (VMALLOC_START, VMALLOC_END - VMALLOC_START) == (0xFFFFC90000000000, 32 << 40)
    assert is_vmalloc_addr(ptr) == (0xFFFFC90000000000 <= ptr <= 0xFFFFE8FFFFFFFFFF)


async def test_vfree_in_interrupt_is_deferred(autojump_clock: Any) -> None:
    """``vfree()`` (5.8 ``mm/vmalloc.c``): ``might_sleep_if(!in_interrupt())``, then
    ``__vfree()``: in interrupt (softirq included) ``__vfree_deferred()`` puts the address on
    this CPU's ``vfree_deferred`` llist and ``schedule_work()``s its ``free_work``; the area
    stays mapped until that worker runs. Outside interrupt it unmaps at once (``__vunmap``)."""
    async with mm_kernel(cfg()) as k:
        mm = k.mm

        async def work(task: Task) -> tuple[int, int, int]:
            p = await mm.vmalloc(task, 3 * 4096)
            q = await mm.vmalloc(task, 4096)
            with task.softirq():
                await mm.vfree(task, p)
            deferred = mm.vmap.nr_areas
            await mm.vfree(task, q)
            direct = mm.vmap.nr_areas
            await task.sleep_ns(1_000_000)
            return deferred, direct, mm.vmap.nr_areas

        assert await on_cpu(k, work) == (2, 1, 0)
        assert not k.locks.splats
        mm.check()


async def test_lazy_max_pages_is_fls_of_the_cpus_times_32_mib(autojump_clock: Any) -> None:
    """``lazy_max_pages()`` (5.x ``mm/vmalloc.c``): ``fls(num_online_cpus()) * (32 MiB /
    PAGE_SIZE)`` lazily freed pages before ``try_purge_vmap_area_lazy()`` flushes the TLB
    (``if (unlikely(nr_lazy > lazy_max_pages()))``)."""
    for cpus in (1, 2, 3, 4, 16):
        async with mm_kernel(cfg(nr_cpus=cpus)) as k:
            assert k.mm.vmap.lazy_max_pages == cpus.bit_length() * (32 << 20) // 4096


async def test_vmalloc_page_failure_warns_like_vmalloc_area_node(autojump_clock: Any) -> None:
    """``__vmalloc_area_node()`` (5.8 ``mm/vmalloc.c``) allocates the area's pages one by one
    with ``gfp_mask | __GFP_NOWARN``; when one fails it records how many it got
    (``area->nr_pages = i``) and at ``fail:`` calls ``warn_alloc(gfp_mask, NULL, "vmalloc:
    allocation failure, allocated %ld of %ld bytes", area->nr_pages * PAGE_SIZE,
    area->size)``, with vmalloc()'s own GFP_KERNEL as the mode and ``area->size`` counting
    the guard page; the pages got are freed and vmalloc() returns NULL."""
    overrides = {"mm.fail_page_alloc_probability": 1.0, "mm.fail_page_alloc_interval": 3}
    async with mm_kernel(cfg(**overrides)) as k:
        mm = k.mm

        async def work(task: Task) -> int:
            return await mm.vmalloc(task, 5 * 4096)  # the third page fails

        assert await on_cpu(k, work) == 0
        assert mm.warnings == [
            "work/0: vmalloc: allocation failure, allocated 8192 of 24576 bytes, "
            "mode:0xcc0(GFP_KERNEL), nodemask=(null)"
        ]
        assert mm.vmap.nr_areas == 0
        mm.check()
