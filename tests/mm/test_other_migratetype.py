"""Block pages of another migratetype than asked for: the RFC's pcp loop and fragmenting
fallback steals, counted apart because the kernel reports them differently (it traces only
the steals, as ``mm_page_alloc_extfrag``), and attributed to ``krcp->lock`` when it is held.
"""

from __future__ import annotations

from typing import Any

from simtools import cfg, mm_kernel, on_cpu, pa

from rcukit.kernel import Kernel
from rcukit.locking.locks import Lock, LockKind
from rcukit.mm.gfp import GFP, GFP_KERNEL, GFP_NOWAIT, MIGRATE_MOVABLE, MIGRATE_UNMOVABLE
from rcukit.mm.page_alloc import KRCP_LOCK_CLASS
from rcukit.sched.sim import Task

NOWAIT = int(GFP_NOWAIT | GFP.NOWARN)
FAST_TRY = int(GFP_NOWAIT | GFP.NOWARN | GFP.FAST_TRY)
MOVABLE = int(GFP_KERNEL | GFP.MOVABLE)
OTHER = "pcp_alloc_other_mt"
OTHER_IN_KRCP = "pcp_alloc_other_mt_in_krcp"
EXTFRAG_IN_KRCP = "extfrag_fragmenting_in_krcp"


def krc_lock(k: Kernel) -> Lock:
    """A raw lock of kvfree_rcu's lockdep class (``__RAW_SPIN_LOCK_UNLOCKED(krc.lock)``)."""
    return k.new_lock(KRCP_LOCK_CLASS, LockKind.RAW_SPINLOCK)


async def test_the_rfc_loop_counts_each_page_taken_from_another_pcp_list(
    autojump_clock: Any,
) -> None:
    """The RFC's ``rmqueue_pcplist()`` (on 5.8.0-rc3, ``mm/page_alloc.c``) tries
    ``pcp->lists[i]`` for ``i = migratetype .. MIGRATE_PCPTYPES-1`` with ``__GFP_FAST_TRY``, so
    an UNMOVABLE request whose own list is empty takes a MOVABLE page: counted once per such
    page (``pcp_alloc_other_mt``), and also as ``_in_krcp`` only while ``krcp->lock`` is held.
    A page from the request's own list is not counted. 5.8's ``mm_page_alloc`` event prints
    ``ac.migratetype`` (the one asked for), so no kernel counter or event shows these."""
    async with mm_kernel(cfg()) as k:
        mm = pa(k)
        lock = krc_lock(k)

        async def work(task: Task) -> list[tuple[int, int]]:
            seen = []
            assert await mm.alloc_pages(task, MOVABLE) is not None  # fills the MOVABLE list
            assert not mm.pcps[0].lists[MIGRATE_UNMOVABLE]
            assert await mm.alloc_pages(task, FAST_TRY) is not None  # outside the lock
            seen.append((k.vmstat[OTHER], k.vmstat[OTHER_IN_KRCP]))
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            assert await mm.alloc_pages(task, FAST_TRY) is not None  # under krcp->lock
            k.locks.release(task, lock)
            seen.append((k.vmstat[OTHER], k.vmstat[OTHER_IN_KRCP]))
            # its own list has a page now: the loop's first list, nothing counted
            assert await mm.alloc_pages(task, NOWAIT) is not None  # refills UNMOVABLE
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            p = await mm.alloc_pages(task, FAST_TRY)
            k.locks.release(task, lock)
            assert p is not None
            seen.append((k.vmstat[OTHER], k.vmstat[OTHER_IN_KRCP]))
            return seen

        assert await on_cpu(k, work) == [(1, 0), (2, 1), (2, 1)]
        mm.check()


async def test_the_normal_allocator_never_takes_another_pcp_list(autojump_clock: Any) -> None:
    """Without ``__GFP_FAST_TRY``, 5.8 ``rmqueue_pcplist()`` looks only at
    ``pcp->lists[migratetype]`` and refills an empty one with ``rmqueue_bulk()`` under
    ``zone->lock`` (``__rmqueue_pcplist()``, 5.8 ``mm/page_alloc.c``), even when another
    migratetype's list is full: the MOVABLE pages stay where they are, nothing is counted."""
    async with mm_kernel(cfg()) as k:
        mm = pa(k)
        lock = krc_lock(k)

        async def work(task: Task) -> tuple[int, int]:
            assert await mm.alloc_pages(task, MOVABLE) is not None
            movable = list(mm.pcps[0].lists[MIGRATE_MOVABLE])
            refills = k.vmstat["pcp_refill"]
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            p = await mm.alloc_pages(task, NOWAIT)
            k.locks.release(task, lock)
            assert p is not None and p not in movable
            assert list(mm.pcps[0].lists[MIGRATE_MOVABLE]) == movable
            return k.vmstat["pcp_refill"] - refills, k.vmstat[OTHER] + k.vmstat[OTHER_IN_KRCP]

        assert await on_cpu(k, work) == (1, 0)


async def test_fragmenting_steals_under_krcp_lock_are_counted_as_extfrag_events(
    autojump_clock: Any,
) -> None:
    """``rmqueue_bulk()``'s ``__rmqueue()`` falls back to another migratetype's *free lists*
    only when its own are empty (``__rmqueue_fallback()``, 5.8 ``mm/page_alloc.c``); each
    steal of a block below ``pageblock_order`` is one ``mm_page_alloc_extfrag`` event with
    ``fragmenting=1`` (``include/trace/events/kmem.h``: ``fallback_order < pageblock_order``).
    With every free block MOVABLE and below a pageblock (``mm.initial_free_max_order`` 8), an
    UNMOVABLE refill steals; the steals made under ``krcp->lock`` are counted as
    ``extfrag_fragmenting_in_krcp``, the ones outside it are not."""
    async with mm_kernel(cfg(**{"mm.initial_free_max_order": 8})) as k:
        mm = pa(k)
        buddy = mm.zone.buddy
        lock = krc_lock(k)

        async def until_a_steal(task: Task) -> int:
            before = buddy.nr_boosting_steals
            for _ in range(4096):  # a refill takes a batch; each empties the list it stole
                if buddy.nr_boosting_steals != before:
                    break
                assert await mm.alloc_pages(task, NOWAIT) is not None
            return buddy.nr_boosting_steals - before

        async def work(task: Task) -> tuple[int, int, int, int]:
            stolen_outside = await until_a_steal(task)
            outside = k.vmstat[EXTFRAG_IN_KRCP]
            k.locks.acquire(task, lock, "kvfree_call_rcu", irqsave=True)
            steals = await until_a_steal(task)
            k.locks.release(task, lock)
            return stolen_outside, outside, steals, k.vmstat[EXTFRAG_IN_KRCP]

        stolen_outside, outside, steals, in_krcp = await on_cpu(k, work)
        assert stolen_outside >= 1 and outside == 0
        assert steals >= 1 and in_krcp == steals
        assert k.vmstat[OTHER] == 0  # the steal moved the block to the UNMOVABLE list
        mm.check()


async def test_mm_page_alloc_prints_the_migratetype_asked_for(autojump_clock: Any) -> None:
    """5.8 ``__alloc_pages_nodemask()`` ends with ``trace_mm_page_alloc(page, order,
    alloc_mask, ac.migratetype)``: the migratetype asked for, not the list the page came
    from. So the RFC loop's MOVABLE page handed to an UNMOVABLE request traces as
    ``migratetype=0``, and only ``pcp_alloc_other_mt`` knows it came from list 1 (freed, the
    page goes to its pageblock's list, MOVABLE: ``free_unref_page_prepare()`` reads
    ``get_pfnblock_migratetype()``)."""
    async with mm_kernel(cfg()) as k:
        mm = pa(k)

        async def work(task: Task) -> int:
            assert await mm.alloc_pages(task, MOVABLE) is not None
            k.tracer.enable()
            pfn = await mm.alloc_pages(task, FAST_TRY)
            assert pfn is not None
            await mm.free_pages(task, pfn)
            assert mm.pcps[0].lists[MIGRATE_MOVABLE][0] == pfn
            return pfn

        pfn = await on_cpu(k, work)
        [alloc] = [e for e in k.tracer.events if e.name == "mm_page_alloc"]
        assert alloc.fields == (
            f"page={mm.page_struct(pfn):016x} pfn=0x{pfn:x} order=0 migratetype=0 "
            "gfp_flags=GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY"
        )
        assert k.vmstat[OTHER] == 1
