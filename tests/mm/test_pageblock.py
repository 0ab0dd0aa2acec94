"""Pageblock ownership: every pageblock has a migratetype, fallback steals retype or claim
pageblocks as ``steal_suitable_fallback()`` does, frees go to the pageblock's migratetype, and
``mm_page_alloc_extfrag`` carries the kernel's fields.

Sources: mm/page_alloc.c of v5.8 (``__rmqueue_fallback``, ``steal_suitable_fallback``,
``move_freepages_block``, ``change_pageblock_range``, ``free_unref_page_prepare``,
``free_unref_page_commit``, ``free_pcppages_bulk``, ``__free_pages_ok``), unchanged in these
respects through v6.1 (read: v6.1's ``move_freepages()`` takes PFNs and ``free_unref_page()``
falls back to ``free_one_page()`` with the same pageblock migratetype when the pcp trylock
fails) and v6.6; include/trace/events/kmem.h (``mm_page_alloc_extfrag``).
"""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from simtools import cfg, mm_kernel, on_cpu, pa

from rcukit.mm.gfp import (
    GFP,
    GFP_KERNEL,
    GFP_NOWAIT,
    MIGRATE_MOVABLE,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
)
from rcukit.mm.zone import (
    MAX_ORDER,
    PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
    BuddyAllocator,
    FallbackSteal,
)
from rcukit.sched.sim import Task

U, M, R = MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE
NOWAIT = int(GFP_NOWAIT | GFP.NOWARN)
MOVABLE = int(GFP_KERNEL | GFP.MOVABLE)


def _full_zone(mt: int, free: list[tuple[int, int]], movable: int | None = None) -> BuddyAllocator:
    """Two pageblocks of type ``mt`` (pfn 0 and 512), all pages in use, then the ``(pfn,
    order)`` blocks freed to ``mt`` (the pageblock's type, as ``__free_pages_ok()`` frees);
    ``movable`` in-use pages answer ``move_freepages()``'s ``num_movable`` when given."""
    b = BuddyAllocator(0, 2 * PAGEBLOCK_NR_PAGES)
    assert b.rmqueue(MAX_ORDER - 1, M) == 0 and b.nr_free == 0
    b.change_pageblock_range(0, MAX_ORDER - 1, mt)
    for pfn, order in free:
        b.free(pfn, order, mt)
    if movable is not None:
        b.nr_movable = lambda start, end: movable if (start, end) == (0, PAGEBLOCK_NR_PAGES) else 0
    b.extfrag.clear()
    return b


def _pageblocks(b: BuddyAllocator) -> list[int]:
    return list(b.pageblock_mt)


def test_boot_marks_every_pageblock_movable_and_keeps_the_unmovable_share() -> None:
    """``memmap_init_zone()`` (v5.8 mm/page_alloc.c) marks every pageblock MIGRATE_MOVABLE;
    the model's ``unmovable_fraction`` boot blocks are UNMOVABLE pageblocks, and a zone that
    starts or ends inside a pageblock still has one type per pageblock."""
    assert _pageblocks(BuddyAllocator(0, 4096)) == [M] * 8
    b = BuddyAllocator(0, 4096, unmovable_fraction=0.25)
    assert _pageblocks(b) == [U, U, M, M, M, M, M, M]
    assert {mt for pfn, _, mt in b.blocks() if pfn < 1024} == {U}
    edge = BuddyAllocator(100, 1000, unmovable_fraction=0.1)
    for pfn, _, mt in edge.blocks():
        assert mt == edge.get_pageblock_migratetype(pfn)


def test_a_steal_of_a_pageblock_or_more_retypes_every_pageblock_of_the_block() -> None:
    """``steal_suitable_fallback()``: ``current_order >= pageblock_order`` takes ownership with
    ``change_pageblock_range()`` (every pageblock of the block) and moves the block to the
    requester's list; no ``boost_watermark()``. The event then shows ``fragmenting=0`` and
    ``change_ownership=1`` (v5.8 mm/page_alloc.c; include/trace/events/kmem.h)."""
    b = BuddyAllocator(0, 4096)
    assert b.rmqueue(0, U) == 0
    assert _pageblocks(b) == [U, U, M, M, M, M, M, M]
    assert b.extfrag == [FallbackSteal(0, 0, MAX_ORDER - 1, U, M, True)]
    assert not b.extfrag[0].fragmenting
    assert b.nr_boosting_steals == 0 and b.nr_fallback_steals == 1
    assert {mt for pfn, _, mt in b.blocks() if pfn < 1024} == {U}
    b.check()


def test_whole_pageblock_move_claims_for_unmovable_at_half_the_pageblock() -> None:
    """``steal_suitable_fallback()`` for an UNMOVABLE request below ``pageblock_order``:
    ``move_freepages_block()`` moves every free block of the pageblock to UNMOVABLE; stealing
    from a MOVABLE pageblock, alike pages are the in-use ones that are not movable
    (``pageblock_nr_pages - (free_pages + movable_pages)``), and the pageblock is claimed when
    ``free_pages + alike_pages >= 1 << (pageblock_order - 1)`` (v5.8 mm/page_alloc.c; same in
    v6.1). 192 free pages: claimed with 256 movable in-use pages (192 + 64 = 256), not with
    257 (192 + 63); the free blocks move either way, and the request then takes the smallest
    UNMOVABLE block (``__rmqueue_smallest()``), the order-6 one."""
    for movable, claimed in ((256, True), (257, False)):
        b = _full_zone(M, [(0, 7), (256, 6)], movable)
        assert b.rmqueue(0, U) == 256
        assert b.get_pageblock_migratetype(0) == (U if claimed else M)
        assert b.get_pageblock_migratetype(PAGEBLOCK_NR_PAGES) == M
        assert {mt for _, _, mt in b.blocks()} == {U}  # both blocks moved
        assert b.extfrag == [FallbackSteal(0, 0, 7, U, M, claimed)]
        assert b.extfrag[0].fragmenting and b.nr_boosting_steals == 1
        b.check()


def test_whole_pageblock_move_claims_for_movable_with_movable_pages() -> None:
    """A MOVABLE request stealing an order >= pageblock_order/2 block counts only the movable
    in-use pages as alike (``alike_pages = movable_pages``, v5.8 ``steal_suitable_fallback()``):
    192 free pages of an UNMOVABLE pageblock claim it with 64 movable pages, not with 63."""
    for movable, claimed in ((64, True), (63, False)):
        b = _full_zone(U, [(0, 7), (256, 6)], movable)
        assert b.rmqueue(0, M) == 256
        assert b.get_pageblock_migratetype(0) == (M if claimed else U)
        assert {mt for _, _, mt in b.blocks()} == {M}
        assert b.extfrag == [FallbackSteal(0, 0, 7, M, U, claimed)]
        b.check()


def test_no_alike_pages_between_unmovable_and_reclaimable() -> None:
    """UNMOVABLE falling back to a RECLAIMABLE pageblock (or the reverse) is "conservative":
    ``alike_pages = 0`` whatever is in use, so only free pages can claim (v5.8
    ``steal_suitable_fallback()``): 192 free pages do not, 256 do."""
    small = _full_zone(R, [(0, 7), (256, 6)], movable=0)
    assert small.rmqueue(0, U) == 256
    assert small.get_pageblock_migratetype(0) == R
    big = _full_zone(R, [(0, 8)], movable=0)
    assert big.rmqueue(0, U) == 0
    assert big.get_pageblock_migratetype(0) == U
    assert big.extfrag == [FallbackSteal(0, 0, 8, U, R, True)]


def test_movable_below_half_a_pageblock_steals_a_single_block() -> None:
    """A MOVABLE request may not steal below ``pageblock_order / 2`` (``can_steal_fallback()``):
    ``__rmqueue_fallback()`` goes to ``find_smallest`` and ``steal_suitable_fallback()`` with
    ``whole_block`` false moves only the found block (``single_page``): the other free blocks
    of the pageblock stay UNMOVABLE, the pageblock keeps its type, and the steal still boosts
    (it comes after ``boost_watermark()``) (v5.8 mm/page_alloc.c)."""
    b = _full_zone(U, [(0, 0), (8, 3)], movable=PAGEBLOCK_NR_PAGES)
    assert b.rmqueue(0, M) == 0
    assert b.blocks() == [(8, 3, U)]
    assert b.get_pageblock_migratetype(0) == U
    assert b.extfrag == [FallbackSteal(0, 0, 0, M, U, False)]
    assert b.nr_boosting_steals == 1
    # An order-4 block (= pageblock_order / 2) may be stolen whole: the lone page moves too.
    whole = _full_zone(U, [(0, 0), (16, 4)], movable=0)
    assert whole.rmqueue(0, M) == 0
    assert {mt for _, _, mt in whole.blocks()} == {M}
    assert whole.extfrag == [FallbackSteal(16, 0, 4, M, U, False)]


def test_a_pageblock_that_leaves_the_zone_is_not_moved() -> None:
    """``move_freepages_block()`` returns 0 when the pageblock ends beyond the zone ("Do not
    cross zone boundaries"), and ``steal_suitable_fallback()`` then moves the found block alone
    (v5.8 mm/page_alloc.c)."""
    b = BuddyAllocator(0, 600)  # the second pageblock ends at 1024
    assert b.rmqueue(9, M) == 0  # the first pageblock in use
    for pfn, order in b.reserve(600 - 512, M):
        if pfn != 512 + 64:
            b.free(pfn, order, M)
    [(p, o, _), *rest] = [x for x in b.blocks() if x[1] >= 3]
    assert b.rmqueue(0, U) is not None
    assert b.get_pageblock_migratetype(512) == M
    assert [mt for pfn, _, mt in b.blocks() if pfn in {x[0] for x in rest}] == [M] * len(rest)
    assert (p, o) == (b.extfrag[0].pfn, b.extfrag[0].fallback_order)


async def test_a_freed_page_goes_to_its_pageblocks_migratetype(autojump_clock: Any) -> None:
    """``free_unref_page_prepare()`` stores ``get_pfnblock_migratetype()`` as the page's pcp
    migratetype and ``free_unref_page_commit()`` puts it on ``pcp->lists[migratetype]``;
    ``__free_pages_ok()`` reads the pageblock's migratetype for a higher order. So a page a
    MOVABLE request got goes back to UNMOVABLE lists once its pageblock is UNMOVABLE; and
    ``free_pcppages_bulk()`` frees a pcp page with its pcp migratetype, not the pageblock's of
    the drain time (v5.8 mm/page_alloc.c; v6.1 the same)."""
    async with mm_kernel(cfg()) as k:
        mm = pa(k)
        buddy = mm.zone.buddy

        async def work(task: Task) -> None:
            page = await mm.alloc_pages(task, MOVABLE)
            block = await mm.alloc_pages(task, MOVABLE, 2)
            assert page is not None and block is not None
            assert buddy.get_pageblock_migratetype(page) == M
            buddy.set_pageblock_migratetype(page, U)
            buddy.set_pageblock_migratetype(block, U)
            await mm.free_pages(task, page)
            assert mm.pcps[0].lists[U][0] == page
            await mm.free_pages(task, block, 2)
            [(head, _, mt)] = [x for x in buddy.blocks() if x[0] <= block < x[0] + (1 << x[1])]
            assert mt == U and head <= block
            # The drain keeps the pcp migratetype although the pageblock is MOVABLE again.
            buddy.set_pageblock_migratetype(page, M)
            await mm.drain_local_pages(task)
            [(_, _, mt)] = [x for x in buddy.blocks() if x[0] <= page < x[0] + (1 << x[1])]
            assert mt == U

        await on_cpu(k, work)
        mm.check()


async def test_mm_page_alloc_extfrag_prints_the_kernels_fields(autojump_clock: Any) -> None:
    """``__rmqueue_fallback()`` calls ``trace_mm_page_alloc_extfrag(page, order,
    current_order, start_migratetype, fallback_mt)`` after ``steal_suitable_fallback()``; the
    event assigns ``change_ownership = (alloc_migratetype ==
    get_pageblock_migratetype(page))`` and prints ``fragmenting = fallback_order <
    pageblock_order`` (include/trace/events/kmem.h and mm/page_alloc.c, v5.8; the same fields
    in v6.1). The first UNMOVABLE refill of a booted zone steals a MOVABLE order-10 block:
    not fragmenting, ownership changed. With free memory in order-8 pieces between movable
    in-use pages, the refill steals below a pageblock (fragmenting); the pageblock is
    claimed exactly when the event says so."""
    async with mm_kernel(cfg()) as k:
        mm = pa(k)
        k.tracer.enable()
        assert await on_cpu(k, lambda task: mm.alloc_pages(task, NOWAIT)) is not None
        [ev] = [e for e in k.tracer.events if e.name == "mm_page_alloc_extfrag"]
        pfn = int(ev.fields.split()[1].removeprefix("pfn=0x"), 16)
        assert ev.fields == (
            f"page={mm.page_struct(pfn):016x} pfn=0x{pfn:x} alloc_order=0 fallback_order=10 "
            "pageblock_order=9 alloc_migratetype=0 fallback_migratetype=1 fragmenting=0 "
            "change_ownership=1"
        )
        assert mm.zone.buddy.get_pageblock_migratetype(pfn) == U
    async with mm_kernel(cfg(**{"mm.initial_free_max_order": 8})) as k:
        mm = pa(k)
        buddy = mm.zone.buddy
        k.tracer.enable()
        assert await on_cpu(k, lambda task: mm.alloc_pages(task, NOWAIT)) is not None
        events = [e for e in k.tracer.events if e.name == "mm_page_alloc_extfrag"]
        assert events
        for ev in events:
            pfn = int(ev.fields.split()[1].removeprefix("pfn=0x"), 16)
            owned = int(buddy.get_pageblock_migratetype(pfn) == U)
            assert ev.fields == (
                f"page={mm.page_struct(pfn):016x} pfn=0x{pfn:x} alloc_order=0 "
                "fallback_order=8 pageblock_order=9 alloc_migratetype=0 "
                f"fallback_migratetype=1 fragmenting=1 change_ownership={owned}"
            )
        assert k.vmstat["watermark_boosts"] >= 1
        mm.check()


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, MAX_ORDER - 1), st.integers(0, 2)),
        st.tuples(st.just("bulk"), st.integers(0, 70), st.integers(0, 2)),
        st.tuples(st.just("free"), st.integers(0, 1 << 20), st.just(0)),
    ),
    max_size=60,
)


def _span(pfn: int, order: int) -> range:
    """The pageblocks (by ``pfn >> pageblock_order``) a block covers."""
    return range(pfn >> PAGEBLOCK_ORDER, ((pfn + (1 << order) - 1) >> PAGEBLOCK_ORDER) + 1)


def _account_steals(b: BuddyAllocator, before: bytes, foreign: dict[int, set[int]]) -> None:
    """Which pageblocks may now hold free blocks on another list, after the steals in
    ``b.extfrag`` (consumed; ``before`` is ``pageblock_mt`` before them): a block of a
    pageblock or more was their only free block and retyped them; a whole-pageblock move put
    every free block of the pageblock on the requester's list, claimed or not; a single-block
    steal (a MOVABLE request below pageblock_order/2, or a pageblock that leaves the zone)
    left the others where they were, and so did a move whose pageblock begins before the zone
    for the blocks below the stolen one (the scan starts at it)."""
    for s in b.extfrag:
        pbs = _span(s.pfn, s.fallback_order)
        if s.fallback_order >= PAGEBLOCK_ORDER:
            for pb in pbs:
                foreign[pb] = set()
            continue
        pb = pbs[0]
        whole = s.fallback_order >= PAGEBLOCK_ORDER // 2 or s.alloc_migratetype != M
        if whole and (pb + 1) << PAGEBLOCK_ORDER <= b.end_pfn:
            if pb << PAGEBLOCK_ORDER >= b.start_pfn:
                same = b.pageblock_mt[pb - b.pb_base] == s.alloc_migratetype
                foreign[pb] = set() if same else {s.alloc_migratetype}
            else:
                foreign.setdefault(pb, set()).update((s.alloc_migratetype, before[pb - b.pb_base]))
        else:
            foreign.setdefault(pb, set()).add(s.alloc_migratetype)
    b.extfrag.clear()


@settings(max_examples=300, deadline=None)
@given(
    start=st.integers(0, 5000),
    nr=st.integers(1, 5000),
    frac=st.sampled_from([0.0, 0.3, 1.0]),
    ops=_ops,
)
def test_free_lists_follow_pageblocks_except_where_a_steal_or_merge_left_them(
    start: int, nr: int, frac: float, ops: list[tuple[str, int, int]]
) -> None:
    """After any allocations, bulk takes, frees (each to its pageblock's migratetype, as
    ``free_one_page()`` and ``__free_pages_ok()`` pass it) and the fallback steals they make:

    * every free block is on its pageblock's migratetype's list, except in a pageblock a
      steal for the list's migratetype left unclaimed (a single block moved, a whole-pageblock
      move below half a pageblock, a pageblock leaving the zone) or a block that merged above
      pageblock_order across pageblocks of different migratetypes. v5.8 and v6.1 allow exactly
      these mismatches (``__free_one_page()`` files the merged block under the migratetype
      it was given, ``move_to_free_list()`` moves one block); later kernels (the v6.10
      freelist migratetype hygiene series) removed them;
    * ``nr_free`` is the pages on the lists (``check()``), the free and allocated pages are
      disjoint and together the whole zone."""
    b = BuddyAllocator(start, nr, unmovable_fraction=frac)
    held: list[tuple[int, int]] = []
    foreign: dict[int, set[int]] = {}
    for op, arg, mt in ops:
        before = bytes(b.pageblock_mt)
        if op == "alloc":
            pfn = b.rmqueue(arg, mt)
            if pfn is not None:
                held.append((pfn, arg))
        elif op == "bulk":
            held.extend((p, 0) for p in b.rmqueue_pages(mt, arg))
        elif held:
            pfn, order = held.pop(arg % len(held))
            b.free(pfn, order, b.get_pageblock_migratetype(pfn))
            [(head, merged, lst)] = [x for x in b.blocks() if x[0] <= pfn < x[0] + (1 << x[1])]
            if merged > PAGEBLOCK_ORDER:
                for pb in _span(head, merged):
                    foreign.setdefault(pb, set()).add(lst)
        _account_steals(b, before, foreign)
        b.check()
        for pfn, order, lst in b.blocks():
            for pb in _span(pfn, order):
                assert lst == b.pageblock_mt[pb - b.pb_base] or lst in foreign.get(pb, ()), (
                    pfn, order, lst, pb,
                )
        in_use = bytearray(nr)
        for pfn, order in held:
            i = pfn - start
            assert not any(in_use[i : i + (1 << order)])
            in_use[i : i + (1 << order)] = b"\x01" * (1 << order)
        for pfn, order, _ in b.blocks():
            i = pfn - start
            assert not any(in_use[i : i + (1 << order)]), "a page both free and allocated"
        assert b.nr_free + sum(in_use) == nr
