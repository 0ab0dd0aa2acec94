"""Fidelity of the zone model (rcukit/mm/zone.py) to the 5.8-5.10 ``mm/page_alloc.c``.

Every test states the kernel fact it checks, the version and the function it was read in.
Source read for this file: ``mm/page_alloc.c`` of 5.10.13 (repository ``Rtoax/linux-5.10.13``,
the upstream code with added comments; kernel.md's label T-5.10). The functions below did not
change between 5.8 and 5.10 except where a docstring says so. The reference arithmetic in
these tests is the kernel's, transcribed from that text, never the model's.
"""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from rcukit.mm.zone import (
    FALLBACKS,
    MAX_ORDER,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    MIN_FREE_KBYTES_CAP_LATER,
    PAGEBLOCK_NR_PAGES,
    PAGEBLOCK_ORDER,
    WATERMARK_BOOST_FACTOR,
    BuddyAllocator,
    PerCpuPages,
    _can_steal_fallback,
    compute_watermarks,
    min_free_kbytes_default,
    pcp_high,
    zone_batchsize,
    zone_min_pages,
    zone_watermark_ok,
)

U, M, R = MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE
_SZ_1M = 1 << 20


def _kernel_zone_batchsize(managed: int, page_size: int) -> int:
    """``zone_batchsize()`` (5.10 mm/page_alloc.c, CONFIG_MMU), line by line."""
    batch = managed // 1024
    if batch * page_size > 1024 * 1024:
        batch = (1024 * 1024) // page_size
    batch //= 4
    if batch < 1:
        batch = 1
    return (1 << ((batch + batch // 2).bit_length() - 1)) - 1


@given(
    managed=st.integers(8192, 1 << 26),
    page_size=st.sampled_from([4096, 16384, 65536]),
)
def test_zone_batchsize_is_the_kernels_arithmetic(managed: int, page_size: int) -> None:
    """``zone_batchsize()`` (5.8-5.10 ``mm/page_alloc.c``): a thousandth of the zone
    (``zone_managed_pages / 1024``), capped at 1 MiB of pages, divided by four (at least 1),
    then ``rounddown_pow_of_two(batch + batch / 2) - 1``. From 8192 managed pages on the
    kernel's result is at least 1, so ``pageset_set_batch()``'s ``max(1UL, batch)`` does not
    change it; a zone of 1 GiB or more of 4 KiB pages gets the 63 the RFC quotes."""
    assert zone_batchsize(managed, page_size) == _kernel_zone_batchsize(managed, page_size)
    if page_size == 4096 and managed >= 262_144:
        assert zone_batchsize(managed, page_size) == 63


@given(managed=st.integers(8192, 1 << 26))
def test_pcp_high_and_batch_are_pageset_set_batch(managed: int) -> None:
    """``pageset_set_batch(p, batch)`` (5.8-5.13 ``mm/page_alloc.c``, through
    ``pageset_set_high_and_batch()`` with ``percpu_pagelist_fraction`` 0) calls
    ``pageset_update(&p->pcp, 6 * batch, max(1UL, 1 * batch))``: ``high`` is six batches.
    (5.14 replaced this with ``zone_highsize()``; the model is the 5.8 one.)"""
    batch = _kernel_zone_batchsize(managed, 4096)
    pcp = PerCpuPages.for_zone(managed)
    assert (pcp.high, pcp.batch) == (6 * batch, max(1, batch))
    assert pcp_high(batch) == 6 * batch
    assert pcp.count == 0 and all(not lst for lst in pcp.lists)


@given(
    min_free_kbytes=st.integers(0, 1 << 20),
    zones=st.lists(st.integers(1, 1 << 24), min_size=1, max_size=3),
    wsf=st.integers(1, 1000),
)
def test_watermarks_are_setup_per_zone_wmarks(
    min_free_kbytes: int, zones: list[int], wsf: int
) -> None:
    """``__setup_per_zone_wmarks()`` (5.8-5.10 ``mm/page_alloc.c``): ``pages_min =
    min_free_kbytes >> (PAGE_SHIFT - 10)``; a lowmem zone's WMARK_MIN is its managed share,
    ``pages_min * managed / lowmem_pages``; then ``tmp = max(tmp >> 2, mult_frac(managed,
    watermark_scale_factor, 10000))``, WMARK_LOW = min + tmp and WMARK_HIGH = min + 2 * tmp.
    ``watermark_scale_factor`` is 10 by default (0.1% of the zone)."""
    lowmem = sum(zones)
    pages_min = min_free_kbytes >> (12 - 10)
    for managed in zones:
        tmp = pages_min * managed // lowmem
        assert zone_min_pages(min_free_kbytes, managed, lowmem) == tmp
        gap = max(tmp >> 2, (managed // 10000) * wsf + (managed % 10000) * wsf // 10000)
        w = compute_watermarks(managed, tmp, wsf)
        assert (w.min, w.low, w.high) == (tmp, tmp + gap, tmp + 2 * gap)


def test_min_free_kbytes_is_four_times_the_square_root_of_lowmem() -> None:
    """``init_per_zone_wmark_min()`` (5.10 ``mm/page_alloc.c``): ``min_free_kbytes =
    int_sqrt(lowmem_kbytes * 16)``, at least 128; its comment's table: 16MB 512k, 64MB 1024k,
    1024MB 4096k, 4096MB 8192k, 16384MB 16384k. 5.10 caps it at 262144 (256 MiB), the cap of
    "mm/page_alloc: increase default min_free_kbytes bound" (Feb 2020; 64 MiB before). The
    model's default cap is 65536 (see the audit report); the 5.10 cap is checked through
    ``cap_kbytes``."""
    table = {16: 512, 64: 1024, 1024: 4096, 4096: 8192, 16384: 16384}
    for mib, kbytes in table.items():
        assert min_free_kbytes_default(mib << 10) == kbytes
    assert min_free_kbytes_default(1 << 10) == 128  # 1 MiB of lowmem: sqrt gives 128 exactly
    assert min_free_kbytes_default(100) == 128
    # 4 TiB of lowmem: isqrt(2^42 * 16) = 2^23 > 262144.
    assert min_free_kbytes_default(1 << 32, cap_kbytes=MIN_FREE_KBYTES_CAP_LATER) == 262_144


@given(lowmem_kbytes=st.integers(0, 1 << 28))
def test_min_free_kbytes_below_the_caps_is_int_sqrt(lowmem_kbytes: int) -> None:
    """``init_per_zone_wmark_min()`` (5.8-5.10): below 256 GiB of lowmem neither cap bites,
    and the value is ``max(int_sqrt(lowmem_kbytes * 16), 128)``."""
    assert min_free_kbytes_default(lowmem_kbytes) == max(math.isqrt(lowmem_kbytes * 16), 128)


def _kernel_watermark_ok(
    free_pages: int,
    order: int,
    mark: int,
    high: bool,
    harder: bool,
    oom: bool,
    reserve: int,
    has_block: bool,
) -> bool:
    """``__zone_watermark_ok()`` (5.10) for a zone without highatomic or CMA reserves."""
    min_ = mark
    alloc_harder = harder or oom
    free_pages -= (1 << order) - 1  # __zone_watermark_unusable_free()
    if high:
        min_ -= min_ // 2
    if alloc_harder:
        if oom:
            min_ -= min_ // 2
        else:
            min_ -= min_ // 4
    if free_pages <= min_ + reserve:
        return False
    if not order:
        return True
    return has_block


@given(
    free_pages=st.integers(0, 1 << 20),
    order=st.integers(0, MAX_ORDER - 1),
    mark=st.integers(0, 1 << 18),
    high=st.booleans(),
    harder=st.booleans(),
    oom=st.booleans(),
    reserve=st.integers(0, 1 << 12),
    has_block=st.booleans(),
)
def test_zone_watermark_ok_is_the_kernels(
    free_pages: int,
    order: int,
    mark: int,
    high: bool,
    harder: bool,
    oom: bool,
    reserve: int,
    has_block: bool,
) -> None:
    """``__zone_watermark_ok()`` (5.8-5.10 ``mm/page_alloc.c``): ``(1 << order) - 1`` pages
    are unusable; ALLOC_HIGH halves the mark; ``alloc_harder`` (ALLOC_HARDER or ALLOC_OOM)
    takes a further half for ALLOC_OOM, else a quarter; the request fails when ``free_pages <=
    min + lowmem_reserve``; order 0 then passes, a higher order needs a free block of at least
    that order on a pcp migratetype's list."""
    expected = _kernel_watermark_ok(free_pages, order, mark, high, harder, oom, reserve, has_block)
    assert (
        zone_watermark_ok(free_pages, order, mark, high, harder, oom, reserve, has_block)
        == expected
    )


def test_gfp_atomic_digs_to_three_eighths_of_min() -> None:
    """``__zone_watermark_ok()`` (5.10): GFP_ATOMIC has ALLOC_HIGH and ALLOC_HARDER, so the
    mark becomes ``min - min/2`` then ``- (min/2)/4``: 3/8 of WMARK_MIN; GFP_NOWAIT (neither)
    needs more than the whole mark."""
    assert zone_watermark_ok(301, 0, 800, True, True, False)
    assert not zone_watermark_ok(300, 0, 800, True, True, False)
    assert not zone_watermark_ok(800, 0, 800, False, False, False)
    assert zone_watermark_ok(801, 0, 800, False, False, False)


def test_fallbacks_table_is_the_kernels() -> None:
    """``fallbacks[MIGRATE_TYPES][3]`` (5.8-5.10 ``mm/page_alloc.c``): UNMOVABLE falls back to
    RECLAIMABLE then MOVABLE, MOVABLE to RECLAIMABLE then UNMOVABLE, RECLAIMABLE to UNMOVABLE
    then MOVABLE (each row ends with the MIGRATE_TYPES terminator)."""
    assert FALLBACKS == ((R, M), (R, U), (U, M))


@given(order=st.integers(0, MAX_ORDER - 1), mt=st.sampled_from([U, M, R]))
def test_can_steal_fallback_is_the_kernels(order: int, mt: int) -> None:
    """``can_steal_fallback()`` (5.8-5.10, ``page_group_by_mobility_disabled`` false): a block
    of ``pageblock_order`` or more, or of ``pageblock_order / 2`` or more, may steal; so may
    any RECLAIMABLE or UNMOVABLE request. Only small MOVABLE requests may not."""
    kernel = (
        order >= PAGEBLOCK_ORDER
        or order >= PAGEBLOCK_ORDER // 2
        or mt in (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE)
    )
    assert _can_steal_fallback(order, mt) == kernel


@given(order=st.integers(0, 9), start=st.integers(0, 3))
def test_rmqueue_smallest_expand_lists_the_upper_halves(order: int, start: int) -> None:
    """``__rmqueue_smallest()`` + ``expand()`` (5.8-5.10): the smallest block of the
    migratetype at or above ``order`` leaves its free list; while ``high > low`` the block is
    halved (``high--; size >>= 1``) and ``page[size]``, the upper half, goes on the free list
    of order ``high``; the caller gets ``page[0]``."""
    b = BuddyAllocator(0, 4096)
    big = 10
    taken = [b.rmqueue_smallest(big, M) for _ in range(start)]  # other order-10 blocks go
    assert all(t is not None for t in taken)
    pfn = b.rmqueue_smallest(order, M)
    assert pfn == start << big
    halves = {(pfn + (1 << o), o, M) for o in range(order, big)}
    blocks = set(b.blocks())
    assert halves <= blocks
    assert b.nr_free == 4096 - (start << big) - (1 << order)
    b.check()


def test_rmqueue_fallback_takes_the_largest_foreign_block() -> None:
    """``__rmqueue_fallback()`` (5.8-5.10): with the requested migratetype's lists empty, the
    search runs from ``MAX_ORDER - 1`` down and takes the largest block of the first
    ``fallbacks[]`` type that has one (``find_suitable_fallback``); an UNMOVABLE request can
    steal (``can_steal_fallback``), so the stolen order-10 block's pageblocks become UNMOVABLE
    (``steal_suitable_fallback``: ``current_order >= pageblock_order`` ->
    ``change_pageblock_range``) and the request is served from it (``__rmqueue`` retries
    ``__rmqueue_smallest``)."""
    b = BuddyAllocator(0, 2048)  # two MOVABLE order-10 blocks
    pfn = b.rmqueue(0, U)
    assert pfn is not None
    stolen = pfn & ~((1 << (MAX_ORDER - 1)) - 1)
    assert pfn == stolen  # the low half of every split stays with the request
    other = 1024 - stolen
    assert b.get_pageblock_migratetype(stolen) == U
    assert b.get_pageblock_migratetype(stolen + PAGEBLOCK_NR_PAGES) == U
    assert b.get_pageblock_migratetype(other) == M
    assert (other, MAX_ORDER - 1, M) in b.blocks()
    [steal] = b.extfrag
    assert (steal.alloc_order, steal.fallback_order) == (0, MAX_ORDER - 1)
    assert (steal.alloc_migratetype, steal.fallback_migratetype) == (U, M)
    assert not steal.fragmenting and steal.change_ownership
    b.check()


def _kernel_free_pcppages_bulk(lists: list[list[int]], count: int) -> list[tuple[int, int]]:
    """``free_pcppages_bulk()``'s page selection (5.10), on lists given head first."""
    count = min(sum(len(lst) for lst in lists), count)
    migratetype = 0
    batch_free = 0
    out: list[tuple[int, int]] = []
    while count:
        while True:
            batch_free += 1
            migratetype += 1
            if migratetype == MIGRATE_PCPTYPES:
                migratetype = 0
            if lists[migratetype]:
                break
        lst = lists[migratetype]
        if batch_free == MIGRATE_PCPTYPES:
            batch_free = count
        while True:
            out.append((lst.pop(), migratetype))  # list_last_entry()
            count -= 1
            batch_free -= 1
            if not (count and batch_free and lst):
                break
    return out


@given(
    sizes=st.lists(st.integers(0, 40), min_size=MIGRATE_PCPTYPES, max_size=MIGRATE_PCPTYPES),
    count=st.integers(0, 130),
)
def test_pcp_drain_picks_pages_as_free_pcppages_bulk(sizes: list[int], count: int) -> None:
    """``free_pcppages_bulk(zone, count, pcp)`` (5.8-5.10 ``mm/page_alloc.c``): ``count =
    min(pcp->count, count)``; lists are visited round robin starting after MIGRATE_UNMOVABLE
    (``++migratetype``), ``batch_free`` grows by one per list visited (so fuller lists give
    more per visit) and becomes ``count`` when only one list is non-empty; each visit takes
    pages from the list's tail (``list_last_entry``: the coldest)."""
    pcp = PerCpuPages(high=1000, batch=63)
    lists: list[list[int]] = []
    pfn = 0
    for mt, n in enumerate(sizes):
        pages = list(range(pfn, pfn + n))
        pfn += n
        pcp.refill(pages, mt)
        lists.append(pages)
    assert pcp.take_for_drain(count) == _kernel_free_pcppages_bulk(lists, count)
    assert pcp.count == sum(len(lst) for lst in lists)
    pcp.check()


def test_pcp_lists_are_lifo_for_frees_and_fifo_for_refills() -> None:
    """5.8-5.10 ``mm/page_alloc.c``: ``free_unref_page_commit()`` frees with ``list_add()``
    (to the head), ``rmqueue_bulk()`` refills with ``list_add_tail()`` in the order
    ``__rmqueue()`` returns pages, and ``__rmqueue_pcplist()`` allocates
    ``list_first_entry()`` (the head): the last page freed is the next one allocated, and
    refilled pages come out in the order they were taken from the buddy lists."""
    pcp = PerCpuPages(high=378, batch=63)
    assert pcp.refill([10, 11, 12], M) == 3
    pcp.push(99, M)
    assert [pcp.pop(M) for _ in range(4)] == [99, 10, 11, 12]
    assert pcp.pop(M) is None


def test_pcp_free_drains_a_batch_at_high() -> None:
    """``free_unref_page_commit()`` (5.8-5.10): after ``pcp->count++``, ``if (pcp->count >=
    pcp->high)`` it calls ``free_pcppages_bulk(zone, READ_ONCE(pcp->batch), pcp)``: the list
    never holds ``high`` pages once the free returns."""
    pcp = PerCpuPages(high=6, batch=2)
    for pfn in range(5):
        pcp.push(pfn, M)
        assert not pcp.over_high
    pcp.push(5, M)
    assert pcp.over_high
    assert [p for p, _ in pcp.take_for_drain(pcp.batch)] == [0, 1]  # the coldest two
    assert pcp.count == 4 and not pcp.over_high


def test_page_allocator_constants_are_x86_64_5_8s() -> None:
    """5.8-5.10 on x86-64 with 4 KiB pages: ``watermark_boost_factor`` defaults to 15000
    (``mm/page_alloc.c``, without CONFIG_DISCONTIGMEM); ``pageblock_order`` is
    ``HUGETLB_PAGE_ORDER`` = 9, so ``pageblock_nr_pages`` is 512 (2 MiB); ``MAX_ORDER`` is 11
    (``include/linux/mmzone.h``: orders 0..10, 4 MiB blocks)."""
    assert WATERMARK_BOOST_FACTOR == 15_000
    assert (PAGEBLOCK_ORDER, PAGEBLOCK_NR_PAGES) == (9, 512)
    assert MAX_ORDER == 11
