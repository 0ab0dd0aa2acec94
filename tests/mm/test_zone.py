"""Zone data structures: batch/high, watermarks, buddy and pcp lists (kernel.md 3.3, 3.4)."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rcukit.errors import ConfigError, MemoryDebugError, PageAllocError, SimulationError
from rcukit.mm.zone import (
    MAX_ORDER,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
    MIN_FREE_KBYTES_CAP_LATER,
    BuddyAllocator,
    FreeList,
    PerCpuPages,
    Watermarks,
    compute_watermarks,
    min_free_kbytes_default,
    pageset_set_batch,
    pcp_high,
    zone_batchsize,
    zone_min_pages,
    zone_watermark_ok,
)

MiB = 1 << 20
U, M, R = MIGRATE_UNMOVABLE, MIGRATE_MOVABLE, MIGRATE_RECLAIMABLE


# --- batch / high ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("zone_bytes", "batch"),
    [(128 * MiB, 7), (256 * MiB, 15), (512 * MiB, 31), (1024 * MiB, 63), (64 * 1024 * MiB, 63)],
)
def test_zone_batchsize_table(zone_bytes: int, batch: int) -> None:
    assert zone_batchsize(zone_bytes // 4096, 4096) == batch


def test_batch_63_high_378_for_1gib_zone() -> None:
    batch = zone_batchsize(262144, 4096)
    assert (batch, pcp_high(batch)) == (63, 378)


def test_a_tiny_zone_gets_high_0_batch_1_and_other_page_sizes() -> None:
    """``zone_batchsize()`` (5.8 mm/page_alloc.c) of a zone below 8192 pages is
    ``rounddown_pow_of_two(1) - 1`` = 0, and ``pageset_set_batch()`` stores high ``6 * 0`` and
    batch ``max(1, 0)``: the fixture host's ZONE_DMA (3840 managed pages) shows ``high: 0``,
    ``batch: 1`` in /proc/zoneinfo."""
    assert zone_batchsize(3840, 4096) == 0
    assert zone_batchsize(0, 4096) == 0
    assert pageset_set_batch(zone_batchsize(3840, 4096)) == (0, 1)
    assert zone_batchsize(8192, 4096) == 1
    # 64 KiB pages: the 1 MiB cap is 16 pages -> 4 -> rounddown(6) - 1 = 3.
    assert zone_batchsize(1 << 30, 65536) == 3


@pytest.mark.parametrize(("managed", "page_size"), [(-1, 4096), (100, 3000), (100, 512)])
def test_batchsize_rejects_bad_input(managed: int, page_size: int) -> None:
    with pytest.raises(ConfigError, match="must be"):
        zone_batchsize(managed, page_size)


def test_pcp_high_rejects_a_negative_batch() -> None:
    with pytest.raises(ConfigError, match="batch -1"):
        pcp_high(-1)


# --- watermarks -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("managed", "min_pages", "low", "high"),
    # The fixture host's DMA, DMA32 and Normal zones (watermark_scale_factor 10).
    [(3840, 62, 77, 92), (772917, 12570, 15712, 18854), (262144, 4263, 5328, 6393)],
)
def test_compute_watermarks_matches_real_host(
    managed: int, min_pages: int, low: int, high: int
) -> None:
    assert compute_watermarks(managed, min_pages) == Watermarks(min=min_pages, low=low, high=high)


def test_compute_watermarks_scale_factor_dominates_on_big_zones() -> None:
    # 0.1% of 4M pages = 4194 > min/4 = 256.
    assert compute_watermarks(1 << 22, 1024) == Watermarks(1024, 1024 + 4194, 1024 + 2 * 4194)
    assert compute_watermarks(1 << 22, 1024, watermark_scale_factor=100).low == 1024 + 41943
    with pytest.raises(ConfigError, match="watermark_scale_factor 0"):
        compute_watermarks(1 << 22, 1024, watermark_scale_factor=0)


def test_min_free_kbytes_default_and_clamps() -> None:
    assert min_free_kbytes_default(1 << 20) == 4096  # 1 GiB of lowmem
    assert min_free_kbytes_default(16 << 20) == 16384
    assert min_free_kbytes_default(1000) == 128
    assert min_free_kbytes_default(1 << 30) == 65536  # 1 TiB: 5.x cap
    assert min_free_kbytes_default(1 << 30, cap_kbytes=MIN_FREE_KBYTES_CAP_LATER) == 131072
    assert min_free_kbytes_default(1 << 34, cap_kbytes=MIN_FREE_KBYTES_CAP_LATER) == 262144
    with pytest.raises(ConfigError, match="lowmem_kbytes -1"):
        min_free_kbytes_default(-1)


def test_zone_min_pages_matches_real_host_split() -> None:
    # Fixture host: min_free_kbytes 67584 split over DMA/DMA32/Normal by managed pages.
    lowmem = 3840 + 772917 + 262144
    assert [zone_min_pages(67584, z, lowmem) for z in (3840, 772917, 262144)] == [62, 12570, 4263]
    # Single simulated zone gets the whole reserve: 4096 KiB = 1024 pages.
    assert zone_min_pages(4096, 262144) == 1024
    with pytest.raises(ConfigError, match="lowmem_pages 10"):
        zone_min_pages(4096, 100, 10)


def test_zone_watermark_ok_arithmetic() -> None:
    ok = zone_watermark_ok
    assert ok(1001, 0, 1000, False, False, False)
    assert not ok(1000, 0, 1000, False, False, False)
    # ALLOC_HIGH halves; ALLOC_HIGH+HARDER (GFP_ATOMIC) reaches 3/8 of the mark.
    assert ok(501, 0, 1000, True, False, False) and not ok(500, 0, 1000, True, False, False)
    assert ok(376, 0, 1000, True, True, False) and not ok(375, 0, 1000, True, True, False)
    # ALLOC_OOM takes half instead of a quarter, and implies the harder branch.
    assert ok(251, 0, 1000, True, False, True) and not ok(250, 0, 1000, True, False, True)
    # Order 1 first discounts (1 << 1) - 1 unusable page; lowmem_reserve raises the bar.
    assert not ok(1001, 1, 1000, False, False, False) and ok(1002, 1, 1000, False, False, False)
    assert not ok(1100, 0, 1000, False, False, False, lowmem_reserve=100)
    # Order > 0 also needs a big enough free block; order 0 ignores that flag.
    assert not ok(5000, 3, 1000, False, False, False, free_area_has_order=False)
    assert ok(5000, 0, 1000, False, False, False, free_area_has_order=False)
    with pytest.raises(PageAllocError, match="order 11"):
        ok(5000, 11, 1000, False, False, False)


# --- buddy allocator --------------------------------------------------------------------------


def test_boot_layout_uses_largest_aligned_blocks() -> None:
    b = BuddyAllocator(1, 2047)
    assert [(pfn, order) for pfn, order, _ in b.blocks()] == [(1 << o, o) for o in range(11)]
    assert {mt for _, _, mt in b.blocks()} == {M}
    assert b.nr_free == 2047
    b.check()
    big = BuddyAllocator(0, 5000)
    assert [(p, o) for p, o, _ in big.blocks()] == [
        (0, 10), (1024, 10), (2048, 10), (3072, 10), (4096, 9), (4608, 8), (4864, 7), (4992, 3)
    ]  # fmt: skip


def test_unmovable_fraction_types_lowest_blocks() -> None:
    b = BuddyAllocator(0, 4096, unmovable_fraction=0.5)
    assert [(p, mt) for p, _, mt in b.blocks()] == [(0, U), (1024, U), (2048, M), (3072, M)]
    with pytest.raises(ConfigError, match="unmovable_fraction"):
        BuddyAllocator(0, 10, unmovable_fraction=1.5)


def test_1gib_zone_inits_fast_and_bulk_walks_pfns_upward() -> None:
    t0 = time.perf_counter()
    b = BuddyAllocator(1 << 18, 1 << 18)
    assert time.perf_counter() - t0 < 0.1
    assert b.nr_free == 262144 and len(b.blocks()) == 256
    t0 = time.perf_counter()
    pages = _bulk(b, 63, U)
    assert time.perf_counter() - t0 < 0.05
    assert pages == list(range(1 << 18, (1 << 18) + 63))
    assert b.nr_free == 262144 - 63
    # The first UNMOVABLE request stole one whole order-10 MOVABLE block; later ones did not.
    assert b.nr_fallback_steals == 1
    assert {mt for _, order, mt in b.blocks() if order < 10} == {U}
    b.check()


def test_rmqueue_smallest_does_not_fall_back() -> None:
    b = BuddyAllocator(0, 1024)
    assert b.rmqueue_smallest(0, U) is None
    assert b.rmqueue_smallest(0, M) == 0
    assert b.nr_free == 1023


def _bulk(b: BuddyAllocator, count: int, mt: int) -> list[int]:
    """``rmqueue_bulk()``'s ``__rmqueue`` calls without its lock (a dry zone stays dry)."""
    return [p for p in (b.rmqueue(0, mt) for _ in range(count)) if p is not None]


def _allocator_with(free: list[tuple[int, int, int]]) -> BuddyAllocator:
    """A 1024-page zone, fully allocated, then the given (pfn, order, mt) blocks freed."""
    b = BuddyAllocator(0, 1024)
    assert b.rmqueue(10, M) == 0 and b.nr_free == 0
    for pfn, order, mt in free:
        b.free(pfn, order, mt)
    b.check()
    return b


# The fallback tests below put each foreign block in its own pageblock (pfn 512 starts the
# second one): a steal that may take the whole pageblock moves every free block of it
# (move_freepages_block(), tests/mm/test_pageblock.py), which would hide which block the
# search picked.


def test_fallback_order_prefers_reclaimable_for_unmovable() -> None:
    b = _allocator_with([(0, 0, M), (514, 0, R)])
    assert b.rmqueue(0, U) == 514
    assert b.rmqueue(0, U) == 0
    assert b.rmqueue(0, U) is None and b.nr_fallback_steals == 2


def test_fallback_steals_largest_block_first() -> None:
    b = _allocator_with([(0, 0, M), (528, 4, M)])
    assert b.rmqueue(0, R) == 528  # the order-4 block, not the lone page at 0
    assert b.blocks()[0] == (0, 0, M)
    assert {mt for pfn, _, mt in b.blocks() if pfn > 528} == {R}


def test_movable_takes_smallest_foreign_block_when_it_cannot_steal() -> None:
    b = _allocator_with([(0, 0, U), (4, 2, U)])
    assert b.rmqueue(0, M) == 0  # order 2 < pageblock_order/2: find_smallest path
    assert b.rmqueue(0, M) == 4
    assert [(p, o, mt) for p, o, mt in b.blocks()] == [(5, 0, M), (6, 1, M)]
    big = _allocator_with([(0, 4, U), (544, 0, U)])
    assert big.rmqueue(0, M) == 0  # an order-4 block is stealable


def test_free_merges_buddies_back_to_max_order() -> None:
    b = BuddyAllocator(0, 2048)
    pages = _bulk(b, 1024, U)
    assert pages == list(range(1024)) and b.nr_free == 1024
    assert b.free_bulk((p, M) for p in reversed(pages)) == 1024
    assert [(p, o) for p, o, _ in b.blocks()] == [(0, 10), (1024, 10)]
    b.check()


def _buddy_state(b: BuddyAllocator) -> tuple[object, ...]:
    lists = [[(sorted(fl.live), list(fl.heap)) for fl in area] for area in b.free_area]
    return b.blocks(), b.nr_free, bytes(b._covered), lists


@settings(max_examples=150, deadline=None)
@given(
    st.integers(0, 2**32),
    st.lists(st.sampled_from((U, M, R)), min_size=1, max_size=80),
    st.sampled_from(("none", "double", "outside", "migratetype")),
    st.integers(0, 80),
)
def test_free_bulk_frees_as_free_does_page_by_page(
    seed: int, mts: list[int], bad: str, at: int
) -> None:
    """``free_pcppages_bulk()`` (v6.1 mm/page_alloc.c) hands each page to ``__free_one_page()``
    under one ``zone->lock``: free_bulk leaves the lists (their heaps included), the counters
    and the covered map as free() page by page does, the migratetype of every merge included,
    and stops with the same error at the same page (a page already free, one outside the
    zone, a migratetype no pcp list has), the pages before it freed."""
    rng = random.Random(seed)
    pairs: list[tuple[int, int]] = []
    for pfn in rng.sample(range(512), len(mts)):
        pairs.append((pfn, mts[len(pairs)]))
    if bad != "none":
        i = at % len(pairs) + 1  # a repeat needs a page before it
        entry = {
            "double": (pairs[rng.randrange(i)][0], U),
            "outside": (1024 + at, U),
            "migratetype": (700, MIGRATE_PCPTYPES),
        }[bad]
        pairs.insert(i, entry)
    out = []
    for bulk in (False, True):
        b = BuddyAllocator(0, 1024)
        _bulk(b, 1024, U)
        error = None
        try:
            if bulk:
                b.free_bulk(iter(pairs))
            else:
                for pfn, mt in pairs:
                    b.free(pfn, 0, mt)
        except (MemoryDebugError, PageAllocError, ValueError) as e:
            error = (type(e).__name__, str(e))
        out.append((error, _buddy_state(b)))
    assert out[0] == out[1]
    assert (out[0][0] is None) == (bad == "none")


def test_free_detects_double_foreign_and_bad_frees() -> None:
    b = BuddyAllocator(0, 1024)
    assert b.rmqueue(0, M) == 0
    b.free(0, 0, M)
    with pytest.raises(MemoryDebugError, match="double free: pfn 0x0"):
        b.free(0, 0, M)
    assert b.rmqueue(1, M) == 0
    b.free(0, 1, M)
    with pytest.raises(MemoryDebugError, match="overlaps the free block 0x0 order 10"):
        b.free(1, 0, M)
    assert b.rmqueue(2, M) == 0
    b.free(2, 0, M)  # part of the allocated order-2 block, which the model cannot tell
    with pytest.raises(MemoryDebugError, match="contains the free block 0x2 order 0"):
        b.free(0, 2, M)
    with pytest.raises(MemoryDebugError, match="foreign free"):
        b.free(2048, 0, M)
    with pytest.raises(PageAllocError, match="not aligned to order 1"):
        b.free(1, 1, M)
    with pytest.raises(PageAllocError, match="order 11"):
        b.rmqueue(11, M)
    with pytest.raises(PageAllocError, match="migratetype 3"):
        b.rmqueue(0, MIGRATE_PCPTYPES)
    b.check()


def test_exhaustion_and_has_free_block() -> None:
    b = BuddyAllocator(0, 8)
    assert b.has_free_block(3) and not b.has_free_block(4)
    assert _bulk(b, 10, M) == list(range(8))
    assert b.rmqueue(0, U) is None and b.nr_free == 0
    assert not b.has_free_block(0)


def test_reserve_takes_big_blocks_fast_and_frees_back() -> None:
    b = BuddyAllocator(0, 1 << 18)
    want = int(0.9 * (1 << 18))
    t0 = time.perf_counter()
    blocks = b.reserve(want, M)
    assert time.perf_counter() - t0 < 0.1
    assert sum(1 << o for _, o in blocks) == want and b.nr_free == (1 << 18) - want
    assert len(blocks) < 300
    b.check()
    for pfn, order in blocks:
        b.free(pfn, order, M)
    assert b.nr_free == 1 << 18 and len(b.blocks()) == 256
    small = BuddyAllocator(0, 8)
    assert small.reserve(100, U) == [(0, 3)] and small.nr_free == 0
    with pytest.raises(PageAllocError, match="nr_pages -1"):
        small.reserve(-1, U)


def test_check_catches_corruption() -> None:
    b = BuddyAllocator(0, 1024)
    b.nr_free += 1
    with pytest.raises(SimulationError, match="nr_free 1025"):
        b.check()
    c = BuddyAllocator(0, 2048)
    c.free_area[10][M].remove(1024)
    c.free_area[10][U].add(1024)
    with pytest.raises(SimulationError, match="indexed as"):
        c.check()


def test_check_catches_a_stale_covered_map() -> None:
    """The covered-page map behind the double-free check must mark exactly the free blocks'
    pages (5.x ``__free_one_page()`` relies on ``PageBuddy``/``page_order`` of the buddy for
    the same question); ``check()`` compares it with the lists."""
    b = BuddyAllocator(0, 1024)
    assert b.rmqueue(0, M) == 0
    b.check()
    b._covered[0] = 1
    with pytest.raises(SimulationError, match="covered map"):
        b.check()


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.integers(0, 300)), max_size=400))
def test_free_list_hands_out_the_lowest_pfn_like_a_sorted_list(
    ops: list[tuple[bool, int]],
) -> None:
    """``FreeList`` (``free_area[order].free_list[mt]``) stands for a sorted list of PFNs:
    whatever the adds and removals (the heap keeps stale entries and duplicates of re-added
    PFNs, and is rebuilt when they pile up), ``first()`` is the lowest listed PFN and
    iteration, length and membership are those of the set, so ``__rmqueue_smallest()``
    picks what it picked with a sorted list (the model's deterministic choice, not the
    kernel's list head)."""
    fl = FreeList([5, 1])
    ref = {1, 5}
    for add, pfn in ops:
        if add and pfn not in ref:
            fl.add(pfn)
            ref.add(pfn)
        elif not add and pfn in ref:
            fl.remove(pfn)
            ref.discard(pfn)
        assert len(fl) == len(ref) and bool(fl) == bool(ref)
        assert list(fl) == sorted(ref) and (pfn in fl) == (pfn in ref)
        if ref:
            assert fl.first() == min(ref)
        assert len(fl.heap) <= 2 * len(ref) + 65
    assert fl.in_range(10, 200) == sorted(p for p in ref if 10 <= p <= 200)


_ops = st.lists(
    st.one_of(
        st.tuples(st.just("alloc"), st.integers(0, MAX_ORDER - 1), st.integers(0, 2)),
        st.tuples(st.just("bulk"), st.integers(0, 70), st.integers(0, 2)),
        st.tuples(st.just("free"), st.integers(0, 1 << 20), st.integers(0, 2)),
    ),
    max_size=40,
)
#: A zone (first PFN, size, unmovable share) and the operations done on it.
_zone_ops = {
    "start": st.integers(0, 5000),
    "nr": st.integers(1, 5000),
    "frac": st.sampled_from([0.0, 0.3, 1.0]),
    "ops": _ops,
}


def _apply(b: BuddyAllocator, op: str, arg: int, mt: int, held: list[tuple[int, int]]) -> None:
    """One of :data:`_ops` on ``b``: an ``rmqueue`` of order ``arg`` (an aligned block inside
    the zone), ``arg`` order-0 pages as ``rmqueue_bulk()`` takes them, or the free of a block
    from ``held``."""
    if op == "alloc":
        pfn = b.rmqueue(arg, mt)
        if pfn is not None:
            assert pfn % (1 << arg) == 0 and b.start_pfn <= pfn and pfn + (1 << arg) <= b.end_pfn
            held.append((pfn, arg))
    elif op == "bulk":
        held.extend((p, 0) for p in _bulk(b, arg, mt))
    elif held:
        pfn, order = held.pop(arg % len(held))
        b.free(pfn, order, mt)


@settings(max_examples=300, deadline=None)
@given(**_zone_ops)
def test_buddy_random_ops_keep_invariants_and_free_all_restores_layout(
    start: int, nr: int, frac: float, ops: list[tuple[str, int, int]]
) -> None:
    b = BuddyAllocator(start, nr, unmovable_fraction=frac)
    initial = [(p, o) for p, o, _ in b.blocks()]
    held: list[tuple[int, int]] = []
    for op, arg, mt in ops:
        _apply(b, op, arg, mt, held)
        b.check()
        assert b.nr_free + sum(1 << o for _, o in held) == nr
    assert len({p for p, _ in held}) == len(held)
    for pfn, order in held:
        b.free(pfn, order, M)
    b.check()
    assert b.nr_free == nr
    assert [(p, o) for p, o, _ in b.blocks()] == initial


@settings(max_examples=300, deadline=None)
@given(
    **_zone_ops,
    refills=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2)), min_size=1, max_size=6),
)
def test_rmqueue_pages_takes_what_order0_rmqueue_calls_take(
    start: int, nr: int, frac: float, ops: list[tuple[str, int, int]],
    refills: list[tuple[int, int]],
) -> None:
    """``rmqueue_bulk()`` (mm/page_alloc.c, v5.x-v6.x) calls ``__rmqueue(zone, 0, mt)`` once
    per page; ``__rmqueue_smallest()`` takes the lowest block of the smallest order that has
    one and ``expand()`` lists its upper halves. ``rmqueue_pages`` takes a split block's pages
    at once: the same pages in the same order, the same free blocks, counts and fallback
    steals, from any state (random allocations, bulk takes and frees first), and the zone
    answers every later request the same."""
    a = BuddyAllocator(start, nr, unmovable_fraction=frac)
    b = BuddyAllocator(start, nr, unmovable_fraction=frac)
    for z in (a, b):
        held: list[tuple[int, int]] = []
        for op, arg, mt in ops:
            _apply(z, op, arg, mt, held)
    for count, mt in refills:
        assert a.rmqueue_pages(mt, count) == _bulk(b, count, mt)
        a.check()
        assert a.blocks() == b.blocks()
        assert (a.nr_free, a.nr_fallback_steals, a.nr_boosting_steals) == (
            b.nr_free, b.nr_fallback_steals, b.nr_boosting_steals
        )
    for order in range(MAX_ORDER):
        for mt in range(MIGRATE_PCPTYPES):
            assert a.rmqueue(order, mt) == b.rmqueue(order, mt)


# --- per-cpu pages ----------------------------------------------------------------------------


def test_pcp_for_zone_and_lifo_order() -> None:
    pcp = PerCpuPages.for_zone(262144)
    assert (pcp.batch, pcp.high, pcp.count) == (63, 378, 0)
    pcp.refill([10, 11, 12], U)  # rmqueue_bulk appends at the tail
    pcp.push(99, U)  # a freed page goes to the head and is reused first
    assert pcp.count == 4
    assert [pcp.pop(U) for _ in range(5)] == [99, 10, 11, 12, None]
    assert pcp.count == 0
    pcp.check()


def test_pop_any_tries_start_type_upward_without_wrapping() -> None:
    pcp = PerCpuPages(high=378, batch=63)
    pcp.refill([5], U)
    pcp.refill([7], R)
    assert pcp.pop_any(M) == 7  # MOVABLE (1) then RECLAIMABLE (2)
    assert pcp.pop_any(M) is None  # no wrap to UNMOVABLE (0)
    assert pcp.pop_any_typed(U) == (5, U)
    assert pcp.count == 0


def test_take_for_drain_round_robin_like_free_pcppages_bulk() -> None:
    pcp = PerCpuPages(high=378, batch=63)
    pcp.refill(range(100, 105), U)
    pcp.refill(range(200, 210), M)
    assert pcp.take_for_drain(7) == [
        (209, M), (104, U), (103, U), (208, M), (102, U), (101, U), (207, M)
    ]  # fmt: skip
    assert pcp.count == 8
    only = PerCpuPages(high=378, batch=63)
    only.refill(range(100, 105), U)
    assert only.take_for_drain(3) == [(104, U), (103, U), (102, U)]
    assert only.take_for_drain(63) == [(101, U), (100, U)] and only.count == 0
    assert only.take_for_drain(63) == []


def test_over_high_and_validation() -> None:
    pcp = PerCpuPages(high=2, batch=1)
    pcp.push(1, M)
    assert not pcp.over_high
    pcp.push(2, M)
    assert pcp.over_high
    with pytest.raises(ConfigError, match="batch 0"):
        PerCpuPages(high=2, batch=0)
    with pytest.raises(ConfigError, match="count 3 disagrees"):
        PerCpuPages(high=2, batch=1, count=3)
    with pytest.raises(PageAllocError, match="migratetype 5"):
        pcp.push(3, 5)
    pcp.count = 7
    with pytest.raises(SimulationError, match="count 7"):
        pcp.check()


@settings(max_examples=100, deadline=None)
@given(
    sizes=st.tuples(st.integers(0, 30), st.integers(0, 30), st.integers(0, 30)),
    batch=st.integers(0, 100),
)
def test_take_for_drain_takes_min_batch_count_distinct_pages(
    sizes: tuple[int, int, int], batch: int
) -> None:
    pcp = PerCpuPages(high=1000, batch=63)
    for mt, n in enumerate(sizes):
        pcp.refill(range(mt * 1000, mt * 1000 + n), mt)
    taken = pcp.take_for_drain(batch)
    assert len(taken) == min(batch, sum(sizes))
    assert len({p for p, _ in taken}) == len(taken)
    assert all(p // 1000 == mt for p, mt in taken)
    assert pcp.count == sum(sizes) - len(taken)
    pcp.check()
