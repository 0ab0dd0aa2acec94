"""Fidelity of the page allocator's paths (rcukit/mm/page_alloc.py) to 5.8 ``mm/page_alloc.c``
and to the RFC's ``__GFP_FAST_TRY`` patch.

Sources read: ``mm/page_alloc.c`` of 5.10.13 (``Rtoax/linux-5.10.13``; the functions below are
the 5.8 ones: ``rmqueue()``, ``rmqueue_pcplist()``, ``__rmqueue_pcplist()``,
``rmqueue_bulk()``, ``get_page_from_freelist()``, ``__alloc_pages_slowpath()``,
``warn_alloc()``), and the RFC's patch against 5.8.0-rc3 in
``/work/shared/reference/rfc-gfp-fast-try.txt`` (kernel.md 2.1).
"""

from __future__ import annotations

from typing import Any

from simtools import cfg, mm_kernel, on_cpu

from rcukit.mm.gfp import GFP, GFP_ATOMIC, GFP_KERNEL, GFP_NOWAIT, MIGRATE_MOVABLE
from rcukit.mm.mm import Mm
from rcukit.mm.page_alloc import PAGE_ALLOC_COSTLY_ORDER
from rcukit.mm.zone import Watermarks
from rcukit.sched.sim import Task

KERNEL = int(GFP_KERNEL)
MOVABLE = KERNEL | int(GFP.MOVABLE)
FAST_TRY = int(GFP.FAST_TRY)


async def test_an_empty_pcp_list_refills_a_batch_under_one_zone_lock(autojump_clock: Any) -> None:
    """``__rmqueue_pcplist()`` (5.8): an empty list is refilled by ``rmqueue_bulk(zone, 0,
    pcp->batch, list, migratetype, alloc_flags)``, which takes ``zone->lock`` once, calls
    ``__rmqueue()`` per page, adds each at the list's tail (``list_add_tail``: physical order,
    "useful for IO devices") and traces ``mm_page_alloc_zone_locked`` (order 0:
    ``percpu_refill=1``); the page handed out is the list's first (``list_first_entry``)."""
    async with mm_kernel(cfg()) as k:
        k.tracer.enable()
        mm = k.mm

        async def work(task: Task) -> int | None:
            return await mm.alloc_pages(task, KERNEL)

        pfn = await on_cpu(k, work)
        pcp = mm.pcps[0]
        assert pfn is not None
        assert (k.vmstat["pcp_refill"], mm.zone_lock.acquisitions) == (1, 1)
        assert pcp.count == pcp.batch - 1 == 62
        listed = list(pcp.lists[0])
        assert listed == list(range(pfn + 1, pfn + pcp.batch))  # expand() keeps low halves
        refilled = [e.fields for e in k.tracer.events if e.name == "mm_page_alloc_zone_locked"]
        assert len(refilled) == pcp.batch
        assert all(f.endswith("order=0 migratetype=0 percpu_refill=1") for f in refilled)
        mm.check()


async def test_fast_try_is_the_rfcs_pcp_only_allocation(autojump_clock: Any) -> None:
    """The RFC's patch (5.8.0-rc3 ``mm/page_alloc.c``): with ``__GFP_FAST_TRY``,
    ``rmqueue_pcplist()`` loops ``for (i = migratetype; i < MIGRATE_PCPTYPES; i++)`` over the
    pcp lists (no wrap: an UNMOVABLE request may take a MOVABLE page, a RECLAIMABLE one only
    its own list), ``__rmqueue_pcplist()`` skips ``rmqueue_bulk()`` (no ``zone->lock``), and
    ``__alloc_pages_nodemask()`` "Bypass slow path if __GFP_FAST_TRY" (``goto out``): no
    kswapd wake and no ``warn_alloc()``, even for the bare ``__get_free_page(__GFP_FAST_TRY)``
    the RFC's usage line shows (no ``__GFP_NOWARN``)."""
    async with mm_kernel(cfg()) as k:
        mm = k.mm

        async def work(task: Task) -> tuple[int | None, int | None, int | None, int]:
            empty = await mm.alloc_pages(task, FAST_TRY)  # every list empty
            locks = mm.zone_lock.acquisitions
            p = await mm.alloc_pages(task, MOVABLE)  # refills the MOVABLE list
            assert p is not None and mm.zone_lock.acquisitions == locks + 1
            other = await mm.alloc_pages(task, FAST_TRY)  # UNMOVABLE takes a MOVABLE page
            recl = await mm.alloc_pages(task, FAST_TRY | int(GFP.RECLAIMABLE))
            return empty, other, recl, mm.zone_lock.acquisitions - locks

        empty, other, recl, locks = await on_cpu(k, work)
        assert empty is None and recl is None
        assert other is not None and other in range(mm.zone.buddy.start_pfn, mm.zone.buddy.end_pfn)
        assert locks == 1  # only the MOVABLE refill
        assert k.vmstat["pcp_alloc_other_mt"] == 1
        assert k.vmstat["kswapd_wake"] == 0 and not mm.warnings
        assert mm.failures_by_gfp == {"__GFP_FAST_TRY": 1, "__GFP_RECLAIMABLE|__GFP_FAST_TRY": 1}
        assert len(mm.pcps[0].lists[MIGRATE_MOVABLE]) == mm.pcps[0].batch - 2
        mm.check()


async def test_fast_try_fails_below_the_low_watermark_with_pages_on_the_list(
    autojump_clock: Any,
) -> None:
    """``__alloc_pages_nodemask()`` (5.8) tries ``get_page_from_freelist(...,
    ALLOC_WMARK_LOW, ...)`` first, whose ``zone_watermark_fast()`` runs before ``rmqueue()``:
    below the low watermark even a pcp hit is refused, and the RFC's ``goto out`` then skips
    the slow path (no kswapd wake) and its ``warn_alloc()``."""
    async with mm_kernel(cfg()) as k:
        mm = k.mm
        zone = mm.zone

        async def work(task: Task) -> tuple[int | None, int | None]:
            hit = await mm.alloc_pages(task, FAST_TRY | int(GFP.NOWARN))  # empty list: None
            assert await mm.alloc_pages(task, KERNEL) is not None  # 62 pages stay listed
            w = zone.wmark
            zone.wmark = Watermarks(w.min, zone.buddy.nr_free, zone.buddy.nr_free + 1)
            mm.page_alloc.update_fast_mark()
            return hit, await mm.alloc_pages(task, FAST_TRY)

        assert await on_cpu(k, work) == (None, None)
        assert len(mm.pcps[0].lists[0]) == mm.pcps[0].batch - 1
        assert k.vmstat["kswapd_wake"] == 0 and not mm.warnings


async def test_a_non_sleeping_mask_below_min_wakes_kswapd_then_warns(autojump_clock: Any) -> None:
    """``__alloc_pages_slowpath()`` (5.8): ``alloc_flags = gfp_to_alloc_flags(gfp_mask)``
    (ALLOC_WMARK_MIN); ``if (alloc_flags & ALLOC_KSWAPD) wake_all_kswapds()``; a second try
    at the min watermark; without ``__GFP_DIRECT_RECLAIM`` ``goto nopage``, which calls
    ``warn_alloc(gfp_mask, ac->nodemask, "page allocation failure: order:%u", order)``:
    ``"%s: %pV, mode:%#x(%pGg), nodemask=%*pbl"``, no direct reclaim. GFP_NOWAIT has
    ``__GFP_KSWAPD_RECLAIM`` and wakes kswapd; gfp 0 never does and prints ``mode:0()``."""
    results = {}
    for gfp in (int(GFP_NOWAIT), 0):
        async with mm_kernel(cfg(**{"mm.initial_free_pages": 900})) as k:
            mm = k.mm
            assert mm.zone.buddy.nr_free < mm.zone.wmark.min

            async def work(task: Task, gfp: int = gfp, mm: Mm = mm) -> int | None:
                return await mm.alloc_pages(task, gfp)

            assert await on_cpu(k, work) is None
            results[gfp] = (k.vmstat["kswapd_wake"] > 0, k.vmstat["allocstall_normal"], mm.warnings)
    assert results[int(GFP_NOWAIT)] == (
        True,
        0,
        ["work/0: page allocation failure: order:0, mode:0x800(GFP_NOWAIT), nodemask=(null)"],
    )
    assert results[0] == (
        False,
        0,
        ["work/0: page allocation failure: order:0, mode:0(), nodemask=(null)"],
    )


async def test_gfp_atomic_is_served_below_min(autojump_clock: Any) -> None:
    """``gfp_to_alloc_flags()`` gives GFP_ATOMIC ALLOC_HIGH and ALLOC_HARDER, so the slow
    path's ``get_page_from_freelist()`` at WMARK_MIN passes ``__zone_watermark_ok()`` down to
    3/8 of the min watermark (5.8 ``mm/page_alloc.c``); the request succeeds where GFP_NOWAIT
    fails."""
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 900})) as k:
        mm = k.mm
        zone = mm.zone
        assert zone.wmark.min * 3 // 8 < zone.buddy.nr_free < zone.wmark.min

        async def work(task: Task) -> int | None:
            return await mm.alloc_pages(task, int(GFP_ATOMIC))

        assert await on_cpu(k, work) is not None
        assert not mm.warnings


async def test_alloc_pages_nolock_is_a_min_watermark_trylock_without_slow_path(
    autojump_clock: Any,
) -> None:
    """``try_alloc_pages_noprof()`` (6.15 ``mm/page_alloc.c``; ``alloc_pages_nolock()`` from
    6.16, kernel.md 2.4): NULL at once on PREEMPT_RT in hard IRQ or NMI and for orders
    ``pcp_allowed_order()`` refuses (above PAGE_ALLOC_COSTLY_ORDER; the THP order is not
    modelled); ``alloc_flags = ALLOC_TRYLOCK`` alone, so ``get_page_from_freelist()`` checks
    the *min* watermark; ``prepare_alloc_pages()`` skips ``should_fail_alloc_page()`` under
    ALLOC_TRYLOCK; no ``__alloc_pages_slowpath()``, so no kswapd wake; ``__GFP_NOWARN |
    __GFP_ZERO | __GFP_NOMEMALLOC``: no report, a zeroed page."""
    overrides = {
        "preempt_rt": True,
        "mm.initial_free_pages": 1200,
        "mm.fail_page_alloc_probability": 1.0,
    }
    async with mm_kernel(cfg(**overrides)) as k:
        mm = k.mm
        zone = mm.zone
        assert zone.wmark.min < zone.buddy.nr_free <= zone.wmark.low

        async def work(task: Task) -> list[int | None]:
            got = [await mm.alloc_pages_nolock(task, 4)]  # costly: refused
            with task.hardirq():
                got.append(await mm.alloc_pages_nolock(task, 0))  # RT hard IRQ: refused
            got.append(await mm.alloc_pages_nolock(task, 0))  # between min and low: served
            got.append(await mm.alloc_pages_nolock(task, PAGE_ALLOC_COSTLY_ORDER))
            w = zone.wmark
            zone.wmark = Watermarks(zone.buddy.nr_free, w.low, w.high)  # now below min
            mm.page_alloc.update_fast_mark()
            got.append(await mm.alloc_pages_nolock(task, 1))
            return got

        got = await on_cpu(k, work)
        assert got[0] is None and got[1] is None and got[4] is None
        assert got[2] is not None and got[3] is not None
        assert k.vmstat["fail_page_alloc"] == 0  # injection never applies
        assert k.vmstat["kswapd_wake"] == 0 and not mm.warnings and not k.locks.splats
        assert k.vmstat["pgalloc_fail_nolock"] == 3


async def test_memory_reserves_follow_gfp_pfmemalloc_flags(autojump_clock: Any) -> None:
    """``__gfp_pfmemalloc_flags()`` (5.8 ``mm/page_alloc.c``): ``__GFP_NOMEMALLOC`` -> none;
    ``__GFP_MEMALLOC`` -> ALLOC_NO_WATERMARKS; outside interrupt a PF_MEMALLOC task (kswapd,
    a direct reclaimer) -> ALLOC_NO_WATERMARKS; in interrupt (hard IRQ) no reserves. The slow
    path's retry uses them (``if (reserve_flags) alloc_flags = ...``), so below the min
    watermark such a request is still served; without ``__GFP_DIRECT_RECLAIM`` it reclaims
    nothing, and without ``__GFP_KSWAPD_RECLAIM`` it wakes no kswapd."""
    async with mm_kernel(cfg(**{"mm.initial_free_pages": 900})) as k:
        mm = k.mm
        zone = mm.zone
        nowarn = int(GFP.NOWARN)

        async def work(task: Task) -> list[bool]:
            assert zone.buddy.nr_free < zone.wmark.min
            got = [await mm.alloc_pages(task, nowarn) is not None]  # no reserves
            task.data["PF_MEMALLOC"] = True
            got.append(await mm.alloc_pages(task, nowarn) is not None)
            got.append(await mm.alloc_pages(task, nowarn | int(GFP.NOMEMALLOC)) is not None)
            with task.hardirq():
                got.append(await mm.alloc_pages(task, nowarn) is not None)
            task.data["PF_MEMALLOC"] = False
            got.append(await mm.alloc_pages(task, nowarn | int(GFP.MEMALLOC)) is not None)
            return got

        assert await on_cpu(k, work) == [False, True, False, False, True]
        assert k.vmstat["allocstall_normal"] == 0 and k.vmstat["kswapd_wake"] == 0
        assert not mm.warnings
