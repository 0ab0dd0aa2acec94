"""kmalloc caches: size classes, kfree vs kfree_bulk cost, detached freelists, KASAN errors."""

from __future__ import annotations

import re
import tracemalloc
from array import array
from typing import Any

import pytest
from simtools import cfg, marker_line, mm_kernel, on_cpu, pa, time_to_free

from rcukit.errors import MemoryDebugError, PageAllocError
from rcukit.mm.gfp import GFP, GFP_ATOMIC, GFP_KERNEL
from rcukit.mm.memmap import PAGE_OFFSET
from rcukit.mm.slab import (
    ZERO_SIZE_PTR,
    _detached_groups,
    kmalloc_sizes,
    slab_order,
)
from rcukit.mm.slub_partial import MIN_PARTIAL
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)


# --- size classes --------------------------------------------------------------------------------


def test_kmalloc_size_classes_and_orders() -> None:
    assert kmalloc_sizes(4096) == (8, 16, 32, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 8192)
    assert kmalloc_sizes(65536)[-1] == 131072
    # slub_min_objects = 4 * (fls(4) + 1) = 16 on 4 CPUs.
    orders = {s: slab_order(s, 4096, 4) for s in kmalloc_sizes(4096)}
    assert orders[8] == 0 and orders[256] == 0
    assert (orders[512], orders[1024], orders[2048], orders[8192]) == (1, 2, 3, 3)


async def test_kmalloc_picks_the_size_class_and_ksize(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        slab = pa(k).slab
        assert [slab.cache_for(n).size for n in (1, 8, 9, 65, 129, 193, 4097)] == [
            8,
            8,
            16,
            96,
            192,
            256,
            8192,
        ]

        async def work(task: Task) -> None:
            a = await pa(k).kmalloc(task, 40, KERNEL)
            b = await pa(k).kmalloc(task, 40, KERNEL)
            assert a and b and b - a == 64 and a % 64 == 0
            assert a >= PAGE_OFFSET and pa(k).is_direct_map_addr(a)
            assert pa(k).ksize(a) == 64
            assert await pa(k).kmalloc(task, 0, KERNEL) == ZERO_SIZE_PTR
            assert pa(k).ksize(ZERO_SIZE_PTR) == 0
            await pa(k).kfree(task, 0)
            await pa(k).kfree(task, ZERO_SIZE_PTR)
            big = await pa(k).kmalloc(task, 10000, KERNEL)  # large kmalloc: order 2
            assert big % 4096 == 0 and pa(k).ksize(big) == 16384
            with pytest.raises(PageAllocError, match="too large"):
                await pa(k).kmalloc(task, 8 << 20, KERNEL)
            with pytest.raises(PageAllocError, match="must be >= 0"):
                await pa(k).kmalloc(task, -1, KERNEL)
            await pa(k).kfree(task, big)
            for p in (a, b):
                await pa(k).kfree(task, p)

        await on_cpu(k, work)
        assert slab.nr_objects == 0
        assert k.vmstat["pgalloc_normal"] - k.vmstat["pgfree"] == 1  # the kmalloc-64 slab
        pa(k).check()


async def test_kzalloc_charges_the_memset(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        cost = k.config.cost

        async def work(task: Task) -> int:
            await pa(k).kmalloc(task, 1024, KERNEL)
            t0 = task.now_ns
            await pa(k).kmalloc(task, 1024, KERNEL | int(GFP.ZERO))
            return task.now_ns - t0

        assert await on_cpu(k, work) == cost.kmalloc_ns + cost.zero_page_ns_per_4k // 4


# --- kfree vs kfree_bulk -------------------------------------------------------------------------


async def _free_cost(bulk: bool, n: int, size: int) -> tuple[int, int]:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def kmalloc(task: Task) -> int:
            return await mm.kmalloc(task, size, KERNEL)

        took = await time_to_free(k, kmalloc, mm.kfree, mm.kfree_bulk, n=n, bulk=bulk)
        assert pa(k).slab.nr_objects == 0
        pa(k).check()
        return took, k.vmstat["pgfree"]


@pytest.mark.parametrize(("n", "size"), [(8, 64), (64, 64), (512, 32), (1000, 192)])
async def test_kfree_bulk_is_cheaper_than_kfree(autojump_clock: Any, n: int, size: int) -> None:
    single, pages_single = await _free_cost(False, n, size)
    bulk, pages_bulk = await _free_cost(True, n, size)
    assert bulk < single
    # which slabs go back depends on the order of the frees (tests/mm/test_slub_partial.py)
    assert pages_bulk >= 0 and pages_single >= 0


async def test_kfree_bulk_cost_is_per_slab_page_plus_per_object(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        cost = k.config.cost

        async def work(task: Task) -> int:
            # Two kmalloc-256 slabs of 16 objects; take all 32 and free them in one call.
            ptrs = [await pa(k).kmalloc(task, 256, KERNEL) for _ in range(32)]
            assert pa(k).slab.cache_for(256).nr_slabs == 2
            t0 = task.now_ns
            await pa(k).kfree_bulk(task, ptrs)
            return task.now_ns - t0

        took = await on_cpu(k, work)
        assert took == 2 * cost.kfree_bulk_call_ns + 32 * cost.kfree_bulk_per_object_ns


def test_detached_freelist_grouping_follows_slub() -> None:
    a, b, c, d = (object() for _ in range(4))
    # Backwards from the end: A collects both earlier A's, skipping B once.
    assert _detached_groups([a, a, b, a], [0, 1, 2, 3]) == [(a, [3, 1, 0]), (b, [2])]  # type: ignore[list-item]
    # Look-ahead of 3: the last A gives up before reaching the first one.
    groups = _detached_groups([a, b, c, d, a], [0, 1, 2, 3, 4])  # type: ignore[list-item]
    assert [g[1] for g in groups] == [[4], [3], [2], [1], [0]]
    # NULL entries (index -1) are skipped; a large kmalloc (None) is its own group.
    assert _detached_groups([a, None, a], [0, -1, 1]) == [(a, [2, 0])]  # type: ignore[list-item]
    assert _detached_groups([None, a], [2, 0]) == [(a, [1]), (None, [0])]  # type: ignore[list-item]


async def test_empty_slabs_beyond_min_partial_go_back(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        cache = pa(k).slab.cache_for(2048)

        async def work(task: Task) -> None:
            ptrs = [await pa(k).kmalloc(task, 2048, KERNEL) for _ in range(cache.nobj * 10)]
            assert cache.nr_slabs == 10
            for p in ptrs:
                await pa(k).kfree(task, p)

        await on_cpu(k, work)
        # what is left: the node list up to min_partial, and what CPU 0 holds (its cpu slab
        # and per-CPU partial list, which frees never discard: tests/mm/test_slub_partial.py)
        assert len(cache.partial) <= MIN_PARTIAL == cache.min_partial
        held = len(cache.cpu_partial[0]) + (cache.cpu_slab[0] is not None)
        assert cache.nr_slabs == len(cache.partial) + held < 10
        assert k.vmstat["nr_slab_pages"] == cache.nr_slabs << cache.order
        pa(k).check()


async def test_failslab_fails_kmalloc(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.failslab_probability": 1.0})) as k:

        async def work(task: Task) -> int:
            return await pa(k).kmalloc(task, 64, int(GFP_ATOMIC))

        assert await on_cpu(k, work) == 0
        assert k.vmstat["failslab"] == 1


@pytest.mark.parametrize(("size", "limit"), [(8, 2.5), (64, 8.0)])
async def test_live_objects_cost_about_a_byte_each(
    autojump_clock: Any, size: int, limit: float
) -> None:
    """A benchmark holds a million objects: no Python object per object, only a byte each.

    What remains is per slab (~0.5 KiB: the Slab, its bytearray, the pfn map), so small
    classes come out near 2 bytes per object and kmalloc-64 (64 per slab) under 8.
    """
    n = 50_000
    async with mm_kernel(cfg()) as k:

        async def work(task: Task) -> int:
            ptrs = array("Q", bytes(8 * n))  # the caller's storage, allocated up front
            tracemalloc.start()
            base = tracemalloc.get_traced_memory()[0]
            for i in range(n):
                ptrs[i] = await pa(k).kmalloc(task, size, KERNEL)
            used = tracemalloc.get_traced_memory()[0] - base
            tracemalloc.stop()
            assert len(set(ptrs)) == n
            return used

        per_object = await on_cpu(k, work) / n
        assert per_object < limit


# --- the debug layer -----------------------------------------------------------------------------


async def test_double_free_names_both_sites_and_changes_nothing(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.debug_alloc_sites": True})) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            p = await mm.kmalloc(task, 64, KERNEL)  # ALLOC-LINE
            keep = await mm.kmalloc(task, 64, KERNEL)
            await mm.kfree(task, p)  # FREE-LINE
            before = (mm.slab.nr_objects, k.vmstat.snapshot())
            with pytest.raises(MemoryDebugError) as info:
                await mm.kfree(task, p)  # AGAIN-LINE
            msg = str(info.value)
            assert "double-free in kfree" in msg and f"{p:#x}" in msg
            assert f"allocated at test_slab.py:{marker_line(__file__, 'ALLOC-LINE')}" in msg
            assert f"freed at test_slab.py:{marker_line(__file__, 'FREE-LINE')}" in msg
            assert f"at test_slab.py:{marker_line(__file__, 'AGAIN-LINE')}" in msg
            assert "cpu 0" in msg and "work/0" in msg
            assert (mm.slab.nr_objects, k.vmstat.snapshot()) == before
            # Still usable: the freed object is handed out again, the live one is intact.
            assert await mm.kmalloc(task, 64, KERNEL) == p
            mm.check_access(keep, task)
            await mm.kfree_bulk(task, [p, keep])

        await on_cpu(k, work)
        assert mm.slab.nr_objects == 0
        mm.check()


async def test_alloc_site_unrecorded_by_default(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:

        async def work(task: Task) -> str:
            p = await pa(k).kmalloc(task, 64, KERNEL)
            await pa(k).kfree(task, p)
            with pytest.raises(MemoryDebugError) as info:
                await pa(k).kfree(task, p)
            return str(info.value)

        msg = await on_cpu(k, work)
        assert "allocated at an unrecorded site (set mm.debug_alloc_sites = true" in msg
        assert "freed at test_slab.py:" in msg


async def test_foreign_and_interior_pointers(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            p = await mm.kmalloc(task, 64, KERNEL)
            page = await mm.get_free_page(task, KERNEL)
            assert page is not None
            with pytest.raises(
                MemoryDebugError, match=r"invalid-free.*not the start of a kmalloc-64"
            ):
                await mm.kfree(task, p + 8)
            with pytest.raises(MemoryDebugError, match=r"invalid-free.*outside the direct map"):
                await mm.kfree(task, 0xDEAD0000)
            with pytest.raises(MemoryDebugError, match="a page from the page allocator"):
                await mm.kfree(task, page)
            with pytest.raises(MemoryDebugError, match="other-users"):
                await mm.kfree(task, mm.page_address(mm.zone.buddy.start_pfn))
            with pytest.raises(MemoryDebugError, match="a free kmalloc-64 object"):
                await mm.kfree(task, p + 64)  # never handed out
            mm.check_access(p, task)
            await mm.kfree(task, p)
            await mm.free_page(task, page)

        await on_cpu(k, work)
        mm.check()


async def test_kfree_of_vmalloc_pointer(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.debug_alloc_sites": True})) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            v = await mm.vmalloc(task, 10000)  # VMALLOC-LINE
            with pytest.raises(MemoryDebugError) as info:
                await mm.kfree(task, v)
            msg = str(info.value)
            assert "a vmalloc address passed to the slab allocator (use vfree or kvfree)" in msg
            assert f"allocated at test_slab.py:{marker_line(__file__, 'VMALLOC-LINE')}" in msg
            await mm.kvfree(task, v)  # the right way still works

        await on_cpu(k, work)
        assert mm.vmap.nr_areas == 0


async def test_use_after_free_is_caught(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.debug_alloc_sites": True})) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            p = await mm.kmalloc(task, 128, KERNEL)  # UAF-ALLOC
            mm.check_access(p + 100, task)
            await mm.kfree(task, p)  # UAF-FREE
            with pytest.raises(MemoryDebugError) as info:
                mm.check_access(p + 100, task)
            msg = str(info.value)
            assert "use-after-free" in msg and f"{p + 100:#x}" in msg
            assert f"allocated at test_slab.py:{marker_line(__file__, 'UAF-ALLOC')}" in msg
            assert f"freed at test_slab.py:{marker_line(__file__, 'UAF-FREE')}" in msg
            with pytest.raises(MemoryDebugError, match="use-after-free"):
                mm.ksize(p)
            big = await mm.kmalloc(task, 20000, KERNEL)
            await mm.kfree(task, big)
            with pytest.raises(MemoryDebugError, match=r"use-after-free.*is free"):
                mm.check_access(big + 5000, task)

        await on_cpu(k, work)


async def test_kfree_bulk_rejects_bad_batches_atomically(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            ptrs = [await mm.kmalloc(task, 32, KERNEL) for _ in range(10)]
            big = await mm.kmalloc(task, 9000, KERNEL)
            freed = await mm.kmalloc(task, 32, KERNEL)
            await mm.kfree(task, freed)
            for bad, what in (
                ([*ptrs[:5], freed, *ptrs[5:]], "double-free"),
                ([*ptrs, ptrs[3]], "double-free"),
                ([big, *ptrs, big], "double-free"),
                ([*ptrs, 0xDEAD0000], "invalid-free"),
            ):
                with pytest.raises(MemoryDebugError, match=what):
                    await mm.kfree_bulk(task, bad)
                for p in [*ptrs, big]:
                    mm.check_access(p, task)  # every object is still live
                assert mm.slab.nr_objects == 11
            await mm.kfree_bulk(task, [0, *ptrs, big, 0])

        await on_cpu(k, work)
        assert mm.slab.nr_objects == 0
        mm.check()


async def test_trace_events(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        k.tracer.enable(frozenset({"kmem_cache_alloc", "kfree"}))

        async def work(task: Task) -> int:
            p = await pa(k).kmalloc(task, 50, KERNEL)
            await pa(k).kfree(task, p)
            return p

        p = await on_cpu(k, work)
        alloc, free = k.tracer.events
        assert alloc.name == "kmem_cache_alloc"
        assert f"ptr={p:#x} bytes_req=50 bytes_alloc=64 gfp_flags=GFP_KERNEL" in alloc.fields
        # call_site=%pS as kmem.h prints it: the modelled caller's symbol+offset/size (this
        # said test_slab.py:LINE before the trace printed symbols)
        assert re.match(r"call_site=work\+0x[0-9a-f]+/0x[0-9a-f]+ ", alloc.fields)
        assert free.name == "kfree" and free.fields.endswith(f"ptr={p:#x}")
