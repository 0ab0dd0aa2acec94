"""Watermark boosting (5.1+) and the boosted-watermark kswapd wake (kernel.md 8.2).

A fallback steal of a block below a pageblock boosts the zone's watermarks
(``boost_watermark()``) and, for a request with ``ALLOC_KSWAPD``, sets
``ZONE_BOOSTED_WATERMARK``; ``rmqueue()``'s ``out:`` label clears it and wakes kswapd for
whichever allocation gets there first, whatever its gfp until 6.4, only with
``__GFP_KSWAPD_RECLAIM`` from 6.5. kswapd reclaims the boost and takes it back off.
"""

from __future__ import annotations

from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from simtools import MS, cfg, mm_kernel, on_cpu

import rcukit
import rcukit.sim
from rcukit.config import KernelConfig
from rcukit.kernel import Kernel, boot
from rcukit.locking.locks import Lock, LockKind
from rcukit.mm.gfp import GFP, GFP_KERNEL, GFP_NOWAIT, MIGRATE_MOVABLE, MIGRATE_UNMOVABLE
from rcukit.mm.memmap import PS_OTHER
from rcukit.mm.mm import Mm
from rcukit.mm.page_alloc import KRCP_LOCK_CLASS
from rcukit.mm.versions import MM_5_8, MM_6_0, MM_6_5, MmVersion
from rcukit.mm.zone import PAGEBLOCK_NR_PAGES, BuddyAllocator, Watermarks, Zone
from rcukit.rcu import profiles
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)
NOWAIT = int(GFP_NOWAIT | GFP.NOWARN)
FAST_TRY = int(GFP_NOWAIT | GFP.NOWARN | GFP.FAST_TRY)
#: 256 MiB zone with 64 MiB free: watermarks 512/640/768, boost cap max(512, 768 * 1.5) = 1152.
ZONE = {"mm.zone_pages": 65_536, "mm.initial_free_pages": 16_384}


@pytest.fixture
def mm_config(monkeypatch: pytest.MonkeyPatch) -> Any:
    """A config whose profile carries ``version``."""

    def make(version: MmVersion, **settings: Any) -> KernelConfig:
        name = f"test-mm-{version.kernel}"
        base = profiles.PROFILES["v6.1" if version.kernel.startswith("6") else "v5.13"]
        monkeypatch.setitem(profiles.PROFILES, name, attrs.evolve(base, name=name, mm=version))
        return cfg(**{"kvfree.profile": name, **ZONE, **settings})

    return make


def fragment(mm: Mm) -> None:
    """Leave every free block MOVABLE and below a pageblock, as on a long-running machine:
    take all free memory, give back every other order-8 piece (its buddy stays in use, so
    nothing merges) and hand the rest to "other users". Run between tasks (like boot)."""
    buddy = mm.zone.buddy
    taken = buddy.reserve(buddy.nr_free, MIGRATE_MOVABLE)
    used: list[tuple[int, int]] = []
    for pfn, order in taken:
        if order < 8:
            used.append((pfn, order))
            continue
        for i, piece in enumerate(range(pfn, pfn + (1 << order), 256)):
            if i % 2:
                used.append((piece, 8))
            else:
                buddy.free(piece, 8, MIGRATE_MOVABLE)
    mm.memmap.set_blocks(used, PS_OTHER)
    for pfn, order in used:
        mm.kswapd.pool.add(pfn, order)
    assert max(order for _, order, _ in buddy.blocks()) == 8
    mm.check()


@given(
    managed=st.integers(0, 1 << 20),
    high=st.integers(0, 100_000),
    factor=st.integers(0, 30_000),
    steals=st.integers(0, 12),
)
def test_boost_watermark_adds_a_pageblock_up_to_the_factor_cap(
    managed: int, high: int, factor: int, steals: int
) -> None:
    """``boost_watermark()`` (5.8 ``mm/page_alloc.c``): no boost with factor 0 or a zone of
    fewer than four pageblocks or a zero cap; else ``min(boost + pageblock_nr_pages,
    max(pageblock_nr_pages, high * factor / 10000))``."""
    zone = Zone(
        "Normal",
        BuddyAllocator(0, 64),
        Watermarks(min=0, low=0, high=high),
        Lock("&zone->lock", LockKind.SPINLOCK),
        managed,
        watermark_boost_factor=factor,
    )
    results = [zone.boost_watermark() for _ in range(steals)]
    cap = high * factor // 10_000
    if not factor or managed < 4 * PAGEBLOCK_NR_PAGES or not cap:
        assert not any(results) and zone.watermark_boost == 0
    else:
        assert all(results)
        assert zone.watermark_boost == min(steals * PAGEBLOCK_NR_PAGES, max(512, cap))


@pytest.mark.parametrize("version", [MM_5_8, MM_6_5])
async def test_a_fragmenting_steal_boosts_wakes_kswapd_and_kswapd_takes_the_boost_back(
    autojump_clock: Any, mm_config: Any, version: MmVersion
) -> None:
    """An unmovable refill that steals an order-8 MOVABLE block (``__rmqueue_fallback`` ->
    ``steal_suitable_fallback()`` -> ``boost_watermark()``, GFP_KERNEL has ALLOC_KSWAPD so
    ZONE_BOOSTED_WATERMARK is set) wakes kswapd at its own ``rmqueue()`` ``out:`` although
    free memory is far above the high watermark (``wakeup_kswapd()`` goes on when
    ``pgdat_watermark_boosted()``); kswapd reclaims ``nr_boost_reclaim`` pages and lowers
    ``watermark_boost`` by its snapshot under ``zone->lock`` (5.8 ``mm/vmscan.c``
    ``balance_pgdat()``). Both 5.8 and 6.5 wake here: the mask has __GFP_KSWAPD_RECLAIM."""
    async with mm_kernel(mm_config(version)) as k:
        mm = k.mm
        zone = mm.zone
        fragment(mm)
        steals = zone.buddy.nr_boosting_steals

        async def work(task: Task) -> tuple[int, int, bool, int]:
            await task.sleep_ns(1000)  # kswapd0 is asleep on kswapd_wait
            pool = mm.kswapd.pool.nr_pages
            assert await mm.alloc_pages(task, KERNEL) is not None
            boost, boosted = zone.watermark_boost, zone.boosted
            await task.sleep_ns(5 * MS)  # kswapd runs
            return boost, pool - mm.kswapd.pool.nr_pages, boosted, zone.watermark_boost

        boost, reclaimed, boosted_after, boost_after = await on_cpu(k, work)
        assert zone.buddy.nr_boosting_steals == steals + 1
        assert boost == PAGEBLOCK_NR_PAGES and k.vmstat["watermark_boosts"] == 1
        assert not boosted_after  # tested and cleared at out:
        assert (k.vmstat["kswapd_wake"], k.vmstat["kswapd_wake_boosted"]) == (1, 1)
        assert mm.nr_free_pages() > zone.wmark.high + boost  # woken although balanced
        assert reclaimed >= boost  # the boost's worth, in SWAP_CLUSTER_MAX chunks
        assert boost_after == 0 and k.vmstat["watermark_boost_decays"] == 1
        mm.check()


async def test_a_steal_without_alloc_kswapd_boosts_but_sets_no_flag(
    autojump_clock: Any, mm_config: Any
) -> None:
    """``steal_suitable_fallback()`` boosts for every fragmenting steal but sets
    ZONE_BOOSTED_WATERMARK only ``if (boost_watermark(zone) && (alloc_flags &
    ALLOC_KSWAPD))`` (5.8 ``mm/page_alloc.c``): a gfp-0 refill raises the watermarks and
    wakes nobody."""
    async with mm_kernel(mm_config(MM_5_8)) as k:
        mm = k.mm
        fragment(mm)

        async def work(task: Task) -> None:
            await task.sleep_ns(1000)
            assert await mm.alloc_pages(task, 0) is not None

        await on_cpu(k, work)
        assert mm.zone.watermark_boost == PAGEBLOCK_NR_PAGES and not mm.zone.boosted
        assert k.vmstat["kswapd_wake"] == 0
        # The boost raises every mark the allocator checks (wmark_pages() adds it).
        assert mm.page_alloc._fast_mark == mm.zone.wmark.low + PAGEBLOCK_NR_PAGES


async def race(k: Kernel, gfp: int) -> None:
    """CPU 1 refills unmovable pages at 2 ms and steals (setting ZONE_BOOSTED_WATERMARK
    under ``zone->lock``); CPU 0, 100 ns later, inside the window before CPU 1 reaches its
    own ``out:``, takes a page off its stocked pcp list with ``gfp`` under a raw lock of
    ``krcp->lock``'s class."""
    mm = k.mm

    async def stock(task: Task) -> None:
        await task.sleep_ns(1000)
        page = await mm.alloc_pages(task, 0)  # an order-10 steal: no boost
        assert page is not None
        await mm.free_pages(task, page)

    await on_cpu(k, stock, 0)
    assert mm.zone.watermark_boost == 0 and mm.pcps[0].lists[MIGRATE_UNMOVABLE]
    fragment(mm)
    krcp = k.new_lock(KRCP_LOCK_CLASS, LockKind.RAW_SPINLOCK)

    async def both(task: Task) -> None:
        if task.cpu.id == 1:
            await task.sleep_ns(2 * MS - task.now_ns)
            assert await mm.alloc_pages(task, KERNEL) is not None
        else:
            await task.sleep_ns(2 * MS + 100 - task.now_ns)
            k.locks.acquire(task, krcp, "kvfree_call_rcu", irqsave=True)
            assert await mm.alloc_pages(task, gfp) is not None
            k.locks.release(task, krcp)

    await k.run_on_cpus(both, [0, 1])


@pytest.mark.parametrize(
    ("version", "gfp", "cpu0_wakes"),
    [
        (MM_5_8, 0, True),
        (MM_5_8, FAST_TRY, True),
        (MM_5_8, NOWAIT, True),
        (MM_6_0, 0, True),
        (MM_6_5, 0, False),
        (MM_6_5, FAST_TRY, True),
        (MM_6_5, NOWAIT, True),
    ],
)
async def test_another_cpus_allocation_under_a_raw_lock_wakes_kswapd_for_the_boost(
    autojump_clock: Any, mm_config: Any, version: MmVersion, gfp: int, cpu0_wakes: bool
) -> None:
    """5.1-6.4 ``rmqueue()``: ``out: if (test_bit(ZONE_BOOSTED_WATERMARK, &zone->flags)) {
    clear_bit(...); wakeup_kswapd(zone, 0, 0, zone_idx(zone)); }`` for every request, so a
    pcp hit with gfp 0 or ``__GFP_FAST_TRY`` under ``krcp->lock`` can take
    ``kswapd_wait``'s ``spinlock_t`` ("Invalid wait context" with PROVE_RAW_LOCK_NESTING);
    6.5 ("mm/page_alloc: don't wake kswapd from rmqueue() unless __GFP_KSWAPD_RECLAIM is
    specified") adds ``alloc_flags & ALLOC_KSWAPD``, and then the stealing CPU wakes kswapd
    itself (kernel.md 8.2)."""
    async with mm_kernel(mm_config(version, prove_raw_lock_nesting=True)) as k:
        await race(k, gfp)
        assert k.vmstat["kswapd_wake_boosted"] == 1  # exactly one of the two wakes it
        assert k.vmstat["kswapd_wakeups_in_krcp"] == (1 if cpu0_wakes else 0)
        wake_reports = [s for s in k.locks.splats if s.lock_name == "&pgdat->kswapd_wait"]
        if cpu0_wakes:
            [s] = wake_reports
            assert (s.kind, s.ip, s.held[0].name) == (
                "invalid_wait_context",
                "wakeup_kswapd",
                KRCP_LOCK_CLASS,
            )
        else:
            assert not wake_reports
        assert not k.mm.zone.boosted


async def test_zone_lock_and_wakeups_are_attributed_to_krcp_only_under_it(
    autojump_clock: Any,
) -> None:
    """Attribution (issue item 10): ``zone_lock_in_krcp`` and ``kswapd_wakeups_in_krcp``
    count what happens while the task holds kvfree_rcu's ``krcp->lock`` (its lockdep class
    ``krc.lock``, ``__RAW_SPIN_LOCK_UNLOCKED(krc.lock)`` in ``kernel/rcu/tree.c``), nothing
    else. Below the low watermark a GFP_NOWAIT refill takes ``zone->lock`` in
    ``rmqueue_bulk()`` and the slowpath wakes kswapd (5.8 ``mm/page_alloc.c``)."""
    c = cfg(**{"mm.initial_free_pages": 1200})
    async with boot(c) as k:
        mm = k.mm
        krcp = k.kvfree.krcs[0]
        assert krcp.lock.name == KRCP_LOCK_CLASS

        async def work(task: Task) -> tuple[int, int, int, int]:
            await task.sleep_ns(MS)  # boot-time cache prefill done
            await mm.drain_local_pages(task)
            zl, wk = k.vmstat["zone_lock_acquisitions"], k.vmstat["kswapd_wake"]
            krcp.raw_spin_lock_irqsave(task)
            assert await mm.alloc_pages(task, NOWAIT) is not None
            krcp.raw_spin_unlock_irqrestore(task)
            in_krcp = (k.vmstat["zone_lock_in_krcp"], k.vmstat["kswapd_wakeups_in_krcp"])
            await mm.drain_local_pages(task)
            assert await mm.alloc_pages(task, KERNEL) is not None  # outside: not counted
            return (
                *in_krcp,
                k.vmstat["zone_lock_acquisitions"] - zl,
                k.vmstat["kswapd_wake"] - wk,
            )

        zl_in, wk_in, zl_all, wk_all = await on_cpu(k, work)
        assert (zl_in, wk_in) == (1, 1)
        assert zl_all >= 3 and wk_all >= 1  # the drains and the second refill
        assert (k.vmstat["zone_lock_in_krcp"], k.vmstat["kswapd_wakeups_in_krcp"]) == (1, 1)
        assert k.vmstat["pcp_lock_in_krcp"] == 0  # 5.8 !RT: no pcp lock at all


@pytest.mark.parametrize("fraction", [0.0, 1.0])
def test_movable_background_bursts_use_the_movable_lists(fraction: float) -> None:
    """``mm.background_movable_fraction`` bursts allocate ``GFP_HIGHUSER_MOVABLE``, whose
    ``gfp_migratetype()`` is MIGRATE_MOVABLE, so they refill and free through the MOVABLE pcp
    lists (5.8 ``rmqueue_pcplist()``/``free_unref_page_commit()`` index ``pcp->lists`` by
    migratetype); 0 keeps every burst unmovable (GFP_KERNEL or GFP_ATOMIC)."""
    c = KernelConfig(nr_cpus=2).replace(
        **{"mm.background_allocs_per_ms": 200, "mm.background_movable_fraction": fraction}
    )

    async def idle(task: Task) -> None:
        await task.sleep_ns(5 * MS)

    kernels: list[Kernel] = []
    res = rcukit.sim.simulate(idle, c, setup=kernels.append)
    assert res.vmstat["background_allocated"] > 1000
    pcps = kernels[0].mm.pcps
    movable = sum(len(p.lists[MIGRATE_MOVABLE]) for p in pcps)
    unmovable = sum(len(p.lists[MIGRATE_UNMOVABLE]) for p in pcps)
    assert (movable > 0, unmovable > 0) == ((True, False) if fraction else (False, True))


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_background_movable_fraction_is_validated(bad: float) -> None:
    """A share outside [0, 1] is a configuration error, named."""
    with pytest.raises(rcukit.ConfigError, match="background_movable_fraction"):
        cfg(**{"mm.background_movable_fraction": bad})


@pytest.mark.parametrize(("free", "order"), [(4587, 8), (1000, 3), (32_768, 8)])
async def test_scattered_boot_free_memory_makes_every_unmovable_steal_boost(
    autojump_clock: Any, free: int, order: int
) -> None:
    """``mm.initial_free_max_order`` below ``pageblock_order`` leaves the free memory in
    unmergeable MOVABLE blocks of at most 2^order pages, so ``__rmqueue_fallback()`` finds no
    block of a whole pageblock and ``steal_suitable_fallback()`` boosts for the first
    unmovable refill (5.8 ``mm/page_alloc.c``; kernel.md 8.2)."""
    c = cfg(
        **{
            "mm.zone_pages": 65_536,
            "mm.initial_free_pages": free,
            "mm.initial_free_max_order": order,
            "mm.min_free_kbytes": 128,
        }
    )
    async with mm_kernel(c) as k:
        mm = k.mm
        blocks = mm.zone.buddy.blocks()
        assert mm.nr_free_pages() == free
        assert max(o for _, o, _ in blocks) == order
        assert {mt for _, _, mt in blocks} == {MIGRATE_MOVABLE}
        assert mm.kswapd.pool.nr_pages == 65_536 - free
        mm.check()  # among others: no two free buddies left unmerged

        async def work(task: Task) -> None:
            await task.sleep_ns(1000)
            assert await mm.alloc_pages(task, KERNEL) is not None

        await on_cpu(k, work)
        assert mm.zone.buddy.nr_boosting_steals >= 1 and mm.zone.watermark_boost > 0


def test_scattered_boot_free_memory_is_at_most_half_the_zone() -> None:
    """Blocks kept apart leave at most every other 2^order piece free: asking for more is a
    configuration error that names the options."""

    async def nothing(task: Task) -> None:
        await task.sleep_ns(1)

    c = cfg(**{"mm.zone_pages": 65_536, "mm.initial_free_pages": 40_000,
               "mm.initial_free_max_order": 8})
    with pytest.raises(rcukit.ConfigError, match=r"initial_free_max_order = 8 .* 32768"):
        rcukit.sim.simulate(nothing, c)
