"""The page allocator: formulas wired in, fast/slow paths, kswapd, reclaim, frees, traces."""

from __future__ import annotations

from typing import Any

import pytest
from simtools import cfg, mm_kernel, on_cpu, pa

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.errors import GfpError, MemoryDebugError, PageAllocError
from rcukit.kernel import Kernel
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import (
    GFP,
    GFP_ATOMIC,
    GFP_KERNEL,
    GFP_NOWAIT,
    MIGRATE_MOVABLE,
)
from rcukit.mm.memmap import PAGE_OFFSET, ZONE_NORMAL_START_PFN
from rcukit.mm.mm import Mm
from rcukit.rcu.kvfree.variants import BlockSources
from rcukit.sched.sim import Task

NOWAIT = int(GFP_NOWAIT)
NOWAIT_NOWARN = int(GFP_NOWAIT | GFP.NOWARN)
FAST_TRY = int(GFP_NOWAIT | GFP.NOWARN | GFP.FAST_TRY)
KERNEL = int(GFP_KERNEL)
ATOMIC = int(GFP_ATOMIC)


# --- boot: kernel formulas wired in --------------------------------------------------------------


async def test_boot_wires_batch_high_watermarks_and_free_memory(autojump_clock: Any) -> None:
    async with mm_kernel(KernelConfig()) as k:
        mm = pa(k)
        assert isinstance(mm, Mm)
        # 1 GiB of 4 KiB pages: zone_batchsize 63, high 6*63 = 378 (kernel.md 3.3).
        assert {(p.batch, p.high) for p in mm.pcps} == {(63, 378)}
        assert k.cpus[2].data["pcp"] is mm.pcps[2]
        # min_free_kbytes = sqrt(1 GiB in KiB * 16) = 4096 KiB = 1024 pages; tmp = 262.
        assert (mm.zone.wmark.min, mm.zone.wmark.low, mm.zone.wmark.high) == (1024, 1286, 1548)
        assert mm.zone_lock.name == "&zone->lock"
        assert mm.zone_lock.kind is LockKind.SPINLOCK
        # 90% used by other users: free starts far above the high watermark.
        assert mm.nr_free_pages() == 262144 - int(262144 * 0.9)
        assert mm.nr_free_pages() > mm.zone.wmark.high
        assert mm.kswapd.pool.nr_pages == int(262144 * 0.9)
        mm.check()


async def test_config_overrides_batch_high_and_free_pages(autojump_clock: Any) -> None:
    c = cfg(**{"mm.pcp_batch": 31, "mm.pcp_high": 100, "mm.initial_free_pages": 5000})
    async with mm_kernel(c) as k:
        assert (pa(k).pcps[0].batch, pa(k).pcps[0].high) == (31, 100)
        assert pa(k).nr_free_pages() == 5000
    small = cfg(**{"mm.zone_pages": 65536})  # 256 MiB -> batch 15
    async with mm_kernel(small) as k:
        assert (pa(k).pcps[0].batch, pa(k).pcps[0].high) == (15, 90)


async def test_initial_free_pages_larger_than_zone_is_an_error(autojump_clock: Any) -> None:
    with pytest.raises(rcukit.ConfigError, match=r"exceeds mm\.zone_pages"):
        async with mm_kernel(cfg(**{"mm.zone_pages": 1024, "mm.initial_free_pages": 2048})):
            pass


async def test_kswapd_is_a_blocked_kthread_on_the_last_cpu(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:

        async def nothing(task: Task) -> None:
            await task.sleep_ns(1000)

        await on_cpu(k, nothing)
        ks = pa(k).kswapd.task
        assert ks is not None and ks.comm == "kswapd0" and ks.cpu.id == 1
        assert not ks.is_workload
        assert ks in pa(k).kswapd.wait.waiters


# --- the fast path and rmqueue_bulk --------------------------------------------------------------


async def test_first_allocation_refills_batch_then_hits_need_no_lock(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> list[int]:
            first = await mm.alloc_pages(task, KERNEL)
            assert first is not None
            refill = (k.vmstat["pcp_refill"], k.vmstat["zone_lock_acquisitions"])
            assert refill == (1, 1)
            assert mm.pcps[0].count == 62
            t0 = task.now_ns
            more = [await mm.alloc_pages(task, KERNEL) for _ in range(10)]
            # pcp hits: no further lock, 60 ns each.
            assert (k.vmstat["pcp_refill"], k.vmstat["zone_lock_acquisitions"]) == refill
            assert task.now_ns - t0 == 10 * k.config.cost.pcp_alloc_ns
            return [first, *[p for p in more if p is not None]]

        pfns = await on_cpu(k, work)
        assert len(set(pfns)) == 11
        assert all(p >= ZONE_NORMAL_START_PFN for p in pfns)
        assert k.vmstat["pgalloc_normal"] == 11
        assert mm.zone_lock.acquisitions == 1
        mm.check()


async def test_rmqueue_bulk_stops_when_the_zone_runs_dry_and_rejects_bad_counts(
    autojump_clock: Any,
) -> None:
    async with mm_kernel(cfg(**{"mm.zone_pages": 4096, "mm.initial_free_pages": 8})) as k:
        mm = pa(k)

        async def work(task: Task) -> int:
            pcp = mm.pcps[0]
            with pytest.raises(PageAllocError, match="count -1"):
                await mm.page_alloc.rmqueue_bulk(task, pcp, MIGRATE_MOVABLE, -1, False)
            n = await mm.page_alloc.rmqueue_bulk(task, pcp, MIGRATE_MOVABLE, 63, False)
            assert list(pcp.lists[MIGRATE_MOVABLE]) == sorted(pcp.lists[MIGRATE_MOVABLE])
            return n

        assert await on_cpu(k, work) == 8
        assert mm.nr_free_pages() == 0 and mm.pcps[0].count == 8
        assert (k.vmstat["pcp_refill"], k.vmstat["zone_lock_acquisitions"]) == (1, 1)
        mm.check()


async def test_free_drains_batch_when_count_reaches_high(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> tuple[int, int]:
            pfns = [await mm.alloc_pages(task, KERNEL) for _ in range(400)]
            assert mm.pcps[0].count < 63
            before = k.vmstat["zone_lock_acquisitions"]
            for p in pfns:
                assert p is not None
                await mm.free_pages(task, p)
            return mm.pcps[0].count, k.vmstat["zone_lock_acquisitions"] - before

        count, locks = await on_cpu(k, work)
        assert count < mm.pcps[0].high
        assert k.vmstat["pcp_drain"] == locks >= 1
        assert k.vmstat["pgfree"] == 400
        mm.check()


async def test_higher_orders_take_the_zone_lock(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> int | None:
            pfn = await mm.alloc_pages(task, KERNEL, 3)
            assert pfn is not None and pfn % 8 == 0
            assert k.vmstat["zone_lock_acquisitions"] == 1
            await mm.free_pages(task, pfn, 3)
            assert k.vmstat["zone_lock_acquisitions"] == 2
            with pytest.raises(PageAllocError, match="order 11 is invalid"):
                await mm.alloc_pages(task, KERNEL, 11)
            return pfn

        await on_cpu(k, work)
        assert k.vmstat["pgalloc_normal"] == 8 and k.vmstat["pgfree"] == 8
        mm.check()


async def test_gfp_zero_charges_zeroing(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)
        cost = k.config.cost

        async def work(task: Task) -> int:
            await mm.alloc_pages(task, KERNEL)  # refill first
            t0 = task.now_ns
            await mm.alloc_pages(task, KERNEL | int(GFP.ZERO))
            return task.now_ns - t0

        assert await on_cpu(k, work) == cost.pcp_alloc_ns + cost.zero_page_ns(4096)


async def test_invalid_gfp_is_rejected(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:

        async def work(task: Task) -> None:
            with pytest.raises(GfpError, match="__GFP_FAST_TRY with __GFP_DIRECT_RECLAIM"):
                await pa(k).alloc_pages(task, KERNEL | int(GFP.FAST_TRY))
            with pytest.raises(GfpError, match="unknown GFP bits"):
                await pa(k).alloc_pages(task, 1 << 30)

        await on_cpu(k, work)


# --- __GFP_FAST_TRY ------------------------------------------------------------------------------


async def test_fast_try_takes_other_migratetypes_but_never_refills(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)
        movable = KERNEL | int(GFP.MOVABLE)

        async def work(task: Task) -> None:
            assert await mm.alloc_pages(task, FAST_TRY) is None  # empty pcp
            assert k.vmstat["zone_lock_acquisitions"] == 0
            p = await mm.alloc_pages(task, movable)  # refills the MOVABLE list
            assert p is not None
            locks = k.vmstat["zone_lock_acquisitions"]
            # UNMOVABLE fast-try walks lists 0..2 and finds the MOVABLE pages.
            q = await mm.alloc_pages(task, FAST_TRY)
            assert q is not None and mm.page_state(q) == "allocated"
            # RECLAIMABLE (2) only looks at its own list: the RFC's loop does not wrap.
            assert await mm.alloc_pages(task, FAST_TRY | int(GFP.RECLAIMABLE)) is None
            assert k.vmstat["zone_lock_acquisitions"] == locks
            await mm.free_pages(task, q)
            # The page goes back to the list it came from.
            assert mm.pcps[0].lists[MIGRATE_MOVABLE][0] == q

        await on_cpu(k, work)
        assert k.vmstat["pcp_refill"] == 1
        assert mm.failures_by_gfp == {
            "GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY": 1,
            "GFP_NOWAIT|__GFP_NOWARN|__GFP_RECLAIMABLE|__GFP_FAST_TRY": 1,
        }
        assert not mm.warnings


async def test_fast_try_has_no_slow_path_even_below_low(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 1200})) as k:
        mm = pa(k)

        async def work(task: Task) -> int | None:
            return await mm.alloc_pages(task, FAST_TRY)

        assert await on_cpu(k, work) is None
        assert k.vmstat["kswapd_wake"] == 0
        assert k.vmstat["pgalloc_fail"] == 1


# --- slow path: kswapd, reserves, direct reclaim -------------------------------------------------


async def test_nowait_below_low_wakes_kswapd_which_reclaims_to_high(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 1200})) as k:
        mm = pa(k)

        async def work(task: Task) -> int | None:
            pfn = await mm.alloc_pages(task, NOWAIT_NOWARN)
            await task.sleep_ns(5_000_000)
            return pfn

        assert await on_cpu(k, work) is not None
        assert k.vmstat["kswapd_wake"] == 1
        assert k.vmstat["pageoutrun"] == 1
        assert k.vmstat["pgsteal_kswapd"] > 0
        assert mm.nr_free_pages() > mm.zone.wmark.high
        assert mm.kswapd.wait_lock.acquisitions == 1
        assert mm.kswapd.wait_lock.name == "&pgdat->kswapd_wait"
        mm.check()


async def test_gfp_zero_never_wakes_kswapd(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 1200})) as k:

        async def work(task: Task) -> int | None:
            return await pa(k).alloc_pages(task, int(GFP.NOWARN))

        assert await on_cpu(k, work) is not None
        assert k.vmstat["kswapd_wake"] == 0
        assert pa(k).kswapd.wait_lock.acquisitions == 0


async def test_atomic_dips_below_min_where_nowait_fails(autojump_clock: Any) -> None:
    # min 1024: GFP_ATOMIC may go down to 3/8 of it (384); start at 900 free.
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 900})) as k:
        mm = pa(k)

        async def work(task: Task) -> tuple[int | None, int | None]:
            nowait = await mm.alloc_pages(task, NOWAIT)
            atomic = await mm.alloc_pages(task, ATOMIC)
            return nowait, atomic

        nowait, atomic = await on_cpu(k, work)
        assert nowait is None
        assert atomic is not None
        # GFP_NOWAIT without __GFP_NOWARN: one warn_alloc line in the kernel's format.
        assert mm.warnings == [
            "work/0: page allocation failure: order:0, mode:0x800(GFP_NOWAIT), nodemask=(null)"
        ]
        assert mm.failures_by_gfp == {"GFP_NOWAIT": 1}


async def test_gfp_kernel_direct_reclaim_sleeps_and_is_counted(autojump_clock: Any) -> None:
    # Below min: GFP_KERNEL must reclaim itself. A second task on the same CPU runs while the
    # first sleeps in reclaim, which shows the sleep is a real schedule point.
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 900})) as k:
        mm = pa(k)
        ran: list[int] = []

        async def other(task: Task) -> None:
            ran.append(task.now_ns)

        async def work(task: Task) -> tuple[int | None, int]:
            k.spawn(other, 0, "other")
            t0 = task.now_ns
            pfn = await mm.alloc_pages(task, KERNEL)
            return pfn, task.now_ns - t0

        pfn, took = await on_cpu(k, work)
        assert pfn is not None
        assert k.vmstat["allocstall_normal"] >= 1
        assert k.vmstat["pgsteal_direct"] >= 32
        assert took >= k.config.cost.direct_reclaim_ns
        assert ran and ran[0] < k.config.cost.direct_reclaim_ns
        assert not k.locks.splats
        mm.check()


async def test_gfp_kernel_in_atomic_context_splats(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:

        async def work(task: Task) -> None:
            lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            await pa(k).alloc_pages(task, KERNEL)
            k.locks.release(task, lock)

        await on_cpu(k, work)
        assert k.splat_counts()["sleeping_in_atomic"] == 1


async def test_noretry_reclaims_once_and_gives_up(autojump_clock: Any) -> None:
    # 8192 pages, min 1024; 700 free. One 32-page pass (plus what kswapd manages meanwhile)
    # cannot reach min: NORETRY fails after one stall, plain GFP_KERNEL keeps reclaiming.
    c = cfg(**{"mm.zone_pages": 8192, "mm.min_free_kbytes": 4096, "mm.initial_free_pages": 700})
    for gfp, one_stall, succeeds in (
        (KERNEL | int(GFP.NORETRY | GFP.NOWARN), True, False),
        (KERNEL, False, True),
    ):
        async with mm_kernel(c) as k:
            assert pa(k).zone.wmark.min == 1024

            async def work(task: Task, gfp: int = gfp) -> int | None:
                return await pa(k).alloc_pages(task, gfp)

            got = await on_cpu(k, work)
            assert (got is not None) == succeeds
            stalls = k.vmstat["allocstall_normal"]
            assert stalls == 1 if one_stall else stalls > 1


async def test_shrinkers_run_in_reclaim(autojump_clock: Any) -> None:
    # No "other users" pages: kswapd only has the shrinker to call.
    c = cfg(**{"mm.zone_pages": 8192, "mm.initial_free_pages": 8192})
    async with mm_kernel(c) as k:
        mm = pa(k)
        cached: list[int] = []
        calls: list[int] = []

        def count(task: Task) -> int:
            return len(cached)

        async def scan(task: Task, nr: int) -> int:
            calls.append(nr)
            n = 0
            while cached and n < nr:
                await mm.free_pages(task, cached.pop())
                n += 1
            return n

        shrinker = mm.register_shrinker("test-cache", count, scan)

        async def work(task: Task) -> None:
            # Take pages until below low (without waking kswapd), keeping them "cached".
            while mm.nr_free_pages() + mm.pcps[0].count > mm.zone.wmark.low - 10:
                pfn = await mm.alloc_pages(task, int(GFP.NOWARN))
                assert pfn is not None
                cached.append(pfn)
            await mm.alloc_pages(task, NOWAIT_NOWARN)
            await task.sleep_ns(10_000_000)

        await on_cpu(k, work)
        assert calls and shrinker.freed > 0 and shrinker.scans == len(calls)
        mm.unregister_shrinker(shrinker)
        assert not mm.kswapd.shrinkers


# --- alloc_pages_nolock --------------------------------------------------------------------------


async def test_nolock_zeroes_never_wakes_kswapd_and_fails_on_busy_zone_lock(
    autojump_clock: Any,
) -> None:
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 1200})) as k:
        mm = pa(k)
        cost = k.config.cost

        async def holder(task: Task) -> None:
            # CPU 1 holds zone->lock from t=0 for 1 ms of simulated time.
            k.locks.acquire(task, mm.zone_lock, "holder")
            task.charge(1_000_000)
            k.locks.release(task, mm.zone_lock)

        async def work(task: Task) -> tuple[int | None, int | None, int]:
            await task.sleep_ns(1000)
            busy = await mm.alloc_pages_nolock(task)
            await task.sleep_ns(2_000_000)
            t0 = task.now_ns
            ok = await mm.alloc_pages_nolock(task)
            return busy, ok, task.now_ns - t0

        k.spawn(holder, 1, "holder")
        busy, ok, took = await on_cpu(k, work)
        assert busy is None
        assert ok is not None
        assert took >= cost.zero_page_ns(4096)
        assert k.vmstat["zone_lock_trylock_fail"] == 1
        assert k.vmstat["kswapd_wake"] == 0
        assert mm.failures_by_gfp == {"__GFP_NOWARN|__GFP_ZERO|__GFP_NOMEMALLOC": 1}
        assert not mm.warnings
        assert not k.locks.splats


async def test_nolock_limits(autojump_clock: Any) -> None:
    async with mm_kernel(cfg(preempt_rt=True)) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            assert await mm.alloc_pages_nolock(task, 4) is None  # costly order
            with task.hardirq():
                assert await mm.alloc_pages_nolock(task) is None  # RT + hardirq
            assert await mm.alloc_pages_nolock(task, 2) is not None

        await on_cpu(k, work)
        assert k.vmstat["pgalloc_fail_nolock"] == 2
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 900})) as k:

        async def below_min(task: Task) -> int | None:
            return await pa(k).alloc_pages_nolock(task)

        assert await on_cpu(k, below_min) is None


# --- frees: debug checks -------------------------------------------------------------------------


async def test_bad_page_frees_raise_and_leave_the_allocator_usable(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> None:
            pfn = await mm.alloc_pages(task, KERNEL)
            big = await mm.alloc_pages(task, KERNEL, 2)
            assert pfn is not None and big is not None
            await mm.free_pages(task, pfn)
            with pytest.raises(MemoryDebugError, match="double free"):
                await mm.free_pages(task, pfn)
            with pytest.raises(MemoryDebugError, match="other kernel users"):
                await mm.free_pages(task, ZONE_NORMAL_START_PFN)
            with pytest.raises(MemoryDebugError, match="tail page"):
                await mm.free_pages(task, big + 1)
            with pytest.raises(MemoryDebugError, match="allocated with order 2"):
                await mm.free_pages(task, big, 0)
            with pytest.raises(MemoryDebugError, match="outside the zone"):
                await mm.free_pages(task, 5)
            with pytest.raises(MemoryDebugError, match="not the start of a page"):
                await mm.free_page(task, mm.page_address(big) + 8)
            mm.check()
            await mm.free_pages(task, big, 2)
            again = await mm.alloc_pages(task, KERNEL)
            assert again == pfn  # LIFO pcp list

        await on_cpu(k, work)
        mm.check()


async def test_get_free_page_addresses(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> int | None:
            addr = await mm.get_free_page(task, KERNEL)
            assert addr is not None
            assert addr == PAGE_OFFSET + mm.virt_to_pfn(addr) * 4096
            assert addr % 4096 == 0 and mm.is_direct_map_addr(addr)
            assert not mm.is_vmalloc_addr(addr)
            await mm.free_page(task, addr)
            with pytest.raises(PageAllocError, match="not a direct-map address"):
                mm.virt_to_pfn(0x1000)
            return addr

        await on_cpu(k, work)
        assert k.vmstat["pgfree"] == 1


# --- traces, counters, determinism ---------------------------------------------------------------


async def test_tracepoints_in_kernel_format(autojump_clock: Any) -> None:
    async with mm_kernel(cfg()) as k:
        k.tracer.enable()
        mm = pa(k)

        async def work(task: Task) -> int | None:
            pfn = await mm.alloc_pages(task, NOWAIT_NOWARN)
            assert pfn is not None
            await mm.free_pages(task, pfn)
            return pfn

        pfn = await on_cpu(k, work)
        assert pfn is not None
        names = [e.name for e in k.tracer.events]
        assert names.count("mm_page_alloc_zone_locked") == 63
        locked = next(e for e in k.tracer.events if e.name == "mm_page_alloc_zone_locked")
        assert locked.fields.endswith(f"pfn=0x{pfn:x} order=0 migratetype=0 percpu_refill=1")
        alloc = next(e for e in k.tracer.events if e.name == "mm_page_alloc")
        assert alloc.fields == (
            f"page={mm.page_struct(pfn):016x} pfn=0x{pfn:x} order=0 migratetype=0 "
            "gfp_flags=GFP_NOWAIT|__GFP_NOWARN"
        )
        free = next(e for e in k.tracer.events if e.name == "mm_page_free")
        assert free.fields == f"page={mm.page_struct(pfn):016x} pfn=0x{pfn:x} order=0"


def _mixed_run(seed: int) -> tuple[dict[str, int], Kernel]:
    c = KernelConfig(nr_cpus=3, seed=seed).replace(
        **{"mm.background_allocs_per_ms": 200, "mm.initial_free_pages": 2000}
    )
    kernels: list[Kernel] = []

    async def workload(task: Task) -> int:
        mm = pa(kernels[0])
        got = 0
        for _ in range(200):  # 10 ms
            addr = await BlockSources().lookup("nowait").get_page(task, mm)
            if addr is not None:
                got += 1
                await mm.free_page(task, addr)
            await task.sleep_ns(50_000)
        return got

    res = rcukit.sim.simulate(workload, c, setup=kernels.append)
    counters = dict(res.vmstat)
    counters["_now"] = res.now_ns
    counters["_results"] = sum(res.results)
    return counters, kernels[0]


def test_background_load_is_deterministic_and_churns_pcp_lists() -> None:
    a, ka = _mixed_run(7)
    b, _ = _mixed_run(7)
    assert a == b
    # 200 pages/ms on 3 CPUs for 10 ms, held ~2 ms: pcp lists empty and refill, zone dips.
    assert 5000 < a["background_allocated"] < 7000
    assert a["background_freed"] > 4000
    assert a["pcp_refill"] > 20
    assert a["kswapd_wake"] >= 1
    bg = pa(ka).background
    assert bg is not None
    assert [t.comm for t in bg.tasks] == ["memload/0", "memload/1", "memload/2"]
    pa(ka).check()
    c, _ = _mixed_run(8)
    assert c != a
