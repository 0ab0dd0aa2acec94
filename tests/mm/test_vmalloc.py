"""vmalloc/vfree/vfree_bulk: addresses, backing pages, sleeping rules, bulk cost, debug errors."""

from __future__ import annotations

from typing import Any

import pytest
from simtools import cfg, marker_line, mm_kernel, on_cpu, pa, time_to_free

from rcukit.config import KernelConfig
from rcukit.errors import MemoryDebugError, PageAllocError
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import GFP_KERNEL
from rcukit.mm.vmalloc import VMALLOC_END, VMALLOC_START, is_vmalloc_addr
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)


async def test_vmalloc_addresses_and_backing_pages(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> tuple[int, int]:
            a = await mm.vmalloc(task, 10_000)  # 3 pages + a guard page
            b = await mm.vmalloc(task, 1)
            assert await mm.vmalloc(task, 0) == 0
            with pytest.raises(PageAllocError, match="must be >= 0"):
                await mm.vmalloc(task, -5)
            return a, b

        a, b = await on_cpu(k, work)
        assert a == VMALLOC_START and b == VMALLOC_START + 4 * 4096
        assert is_vmalloc_addr(a) and mm.is_vmalloc_addr(b)
        assert not is_vmalloc_addr(VMALLOC_END) and not is_vmalloc_addr(0xFFFF888000000000)
        assert k.vmstat["nr_vmalloc_pages"] == 4 and k.vmstat["pgalloc_normal"] == 4
        assert mm.vmap.nr_areas == 2

        async def free(task: Task) -> None:
            await mm.vfree(task, a)
            await mm.kvfree(task, b)
            await mm.vfree(task, 0)

        await on_cpu(k, free)
        assert k.vmstat["nr_vmalloc_pages"] == 0 and k.vmstat["pgfree"] == 4
        assert mm.vmap.nr_areas == 0
        mm.check()


async def test_vfree_is_a_might_sleep_point(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            p = await mm.vmalloc(task, 100)
            lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            await mm.vfree(task, p)
            k.locks.release(task, lock)

        await on_cpu(k, work)
        [splat] = k.locks.splats
        assert splat.kind == "sleeping_in_atomic" and splat.ip == "vfree"


async def test_vfree_from_softirq_is_deferred_to_a_worker(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> int:
            p = await mm.vmalloc(task, 100)
            with task.softirq():
                await mm.vfree(task, p)
            assert mm.vmap.nr_areas == 1  # still there: vfree_atomic only queued it
            await task.sleep_ns(1_000_000)
            return p

        await on_cpu(k, work)
        assert mm.vmap.nr_areas == 0
        assert not k.locks.splats
        assert k.vmstat["vfree_bulk"] == 1  # the worker frees the deferred list as a batch


async def _vfree_cost(bulk: bool, n: int) -> int:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def vmalloc(task: Task) -> int:
            return await mm.vmalloc(task, 5000)

        took = await time_to_free(k, vmalloc, mm.vfree, mm.vfree_bulk, n=n, bulk=bulk)
        assert pa(k).vmap.nr_areas == 0 and k.vmstat["pgfree"] == 2 * n
        assert pa(k).vmap.lock.acquisitions == n + (1 if bulk else n)
        return took


@pytest.mark.parametrize("n", [2, 16, 128])
async def test_vfree_bulk_is_cheaper_than_vfree(autojump_clock: Any, n: int) -> None:
    single = await _vfree_cost(False, n)
    bulk = await _vfree_cost(True, n)
    assert bulk < single
    c = KernelConfig().cost
    assert single - bulk == (n - 1) * (c.vfree_ns - c.vfree_bulk_per_area_ns + c.spin_lock_ns)


async def test_vfree_bulk_checks_sleeping_once(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:

        async def work(task: Task) -> None:
            ptrs = [await pa(k).vmalloc(task, 100) for _ in range(5)]
            lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            k.locks.acquire(task, lock, "kvfree_call_rcu")
            await pa(k).vfree_bulk(task, ptrs)
            k.locks.release(task, lock)

        await on_cpu(k, work)
        assert k.splat_counts()["sleeping_in_atomic"] == 1


async def test_vmalloc_debug_errors(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.debug_alloc_sites": True})) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            v = await mm.vmalloc(task, 6000)  # V-ALLOC
            w = await mm.vmalloc(task, 100)
            s = await mm.kmalloc(task, 64, KERNEL)  # K-ALLOC
            mm.check_access(v + 5000, task)
            await mm.vfree(task, v)  # V-FREE
            with pytest.raises(MemoryDebugError) as info:
                await mm.vfree(task, v)
            msg = str(info.value)
            assert "double-free in vfree" in msg
            assert f"allocated at test_vmalloc.py:{marker_line(__file__, 'V-ALLOC')}" in msg
            assert f"freed at test_vmalloc.py:{marker_line(__file__, 'V-FREE')}" in msg
            with pytest.raises(MemoryDebugError) as info:
                mm.check_access(v + 5000, task)
            msg = str(info.value)
            assert "use-after-free" in msg
            assert f"freed at test_vmalloc.py:{marker_line(__file__, 'V-FREE')}" in msg
            assert f"allocated at test_vmalloc.py:{marker_line(__file__, 'V-ALLOC')}" in msg
            with pytest.raises(MemoryDebugError) as info:
                await mm.vfree(task, s)
            msg = str(info.value)
            assert "a kmalloc pointer passed to vfree" in msg
            assert f"allocated at test_vmalloc.py:{marker_line(__file__, 'K-ALLOC')}" in msg
            with pytest.raises(MemoryDebugError, match="nonexistent vm area"):
                await mm.vfree(task, w + 4096 * 7)
            with pytest.raises(
                MemoryDebugError, match=r"vmalloc-out-of-bounds.*not inside any live"
            ):
                mm.check_access(w + 4096, task)  # the guard page
            with pytest.raises(MemoryDebugError, match="appears twice"):
                await mm.vfree_bulk(task, [w, w])
            mm.check_access(w, task)  # untouched by the failed batch
            with pytest.raises(MemoryDebugError, match="double-free"):
                await mm.vfree_bulk(task, [w, v])
            mm.check_access(w, task)
            await mm.kvfree(task, w)
            await mm.kvfree(task, s)

        await on_cpu(k, work)
        assert mm.vmap.nr_areas == 0 and mm.slab.nr_objects == 0
        mm.check()
