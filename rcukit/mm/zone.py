"""Pure data structures of one simulated zone: buddy free lists, per-CPU page lists, watermarks.

Nothing here locks, sleeps, reads a clock or traces (``Zone`` only holds its lock). The page
allocator wraps these structures with ``zone->lock``/pcp protection, costs and tracepoints, so
the same code serves every allocation mode the simulation compares (pcp-only
``__GFP_FAST_TRY``, ``GFP_NOWAIT`` refills, ``alloc_pages_nolock()`` trylocks). Kernel facts
follow kernel.md sections 3.3 (pcp, batch/high) and 3.4 (watermarks, ``__zone_watermark_ok``),
5.8-5.10 era unless a docstring says otherwise.

Migratetype numbering is the 5.x one: UNMOVABLE 0, MOVABLE 1, RECLAIMABLE 2, and
``MIGRATE_PCPTYPES`` 3 is both the number of pcp lists and the first non-pcp type (HIGHATOMIC,
CMA, ISOLATE are not modelled).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Iterator

import attrs

from rcukit.errors import ConfigError, MemoryDebugError, PageAllocError, SimulationError
from rcukit.locking.locks import Lock
from rcukit.mm.gfp import (
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_RECLAIMABLE,
    MIGRATE_UNMOVABLE,
)

#: Orders 0..MAX_ORDER-1 (5.x meaning of MAX_ORDER): the largest block is 4 MiB of 4 KiB pages.
MAX_ORDER = 11
#: x86-64 with hugetlb: a pageblock is one 2 MiB huge page (the steal heuristic and the
#: watermark boost step use it).
PAGEBLOCK_ORDER = 9
#: ``pageblock_nr_pages``.
PAGEBLOCK_NR_PAGES = 1 << PAGEBLOCK_ORDER
#: ``vm.watermark_boost_factor`` default (5.1+): the boost may reach 150% of the high watermark.
WATERMARK_BOOST_FACTOR = 15_000

#: ``fallbacks[]`` of mm/page_alloc.c (5.x), indexed by the requested migratetype.
FALLBACKS: tuple[tuple[int, ...], ...] = (
    (MIGRATE_RECLAIMABLE, MIGRATE_MOVABLE),  # UNMOVABLE
    (MIGRATE_RECLAIMABLE, MIGRATE_UNMOVABLE),  # MOVABLE
    (MIGRATE_UNMOVABLE, MIGRATE_MOVABLE),  # RECLAIMABLE
)

#: ``init_per_zone_wmark_min()`` lower clamp.
MIN_FREE_KBYTES_FLOOR = 128
#: Upper clamp in 5.x (checked in 5.x page_alloc.c text); the default here because the
#: simulation models the 5.8-5.10 allocator the RFC was written against.
MIN_FREE_KBYTES_CAP_5X = 65536
#: Upper clamp in later kernels (256 MiB) [inferred version]. Pass as ``cap_kbytes`` to model them.
MIN_FREE_KBYTES_CAP_LATER = 262144

_SZ_1M = 1 << 20


def _rounddown_pow_of_two(n: int) -> int:
    return 1 << (n.bit_length() - 1)


def _check_page_size(page_size: int) -> None:
    if page_size < 1024 or page_size > _SZ_1M or page_size & (page_size - 1):
        raise ConfigError(
            f"page_size {page_size} is invalid: must be a power of two between 1024 and {_SZ_1M}"
        )


def zone_batchsize(managed_pages: int, page_size: int = 4096) -> int:
    """``zone_batchsize()`` since 4.19 (kernel.md 3.3): the pcp batch a zone's size asks for.

    The 1 MiB cap (d8a759b57035) makes every zone >= 1 GiB of 4 KiB pages use 63, the "63 pages"
    the RFC quotes. The 2^n - 1 shape avoids cache-colour aliasing between alternating batch
    allocators. A zone below 8192 pages computes 0 (``rounddown_pow_of_two(1) - 1``), which
    :func:`pageset_set_batch` turns into high 0, batch 1 (ZONE_DMA's ``high: 0 batch: 1`` in
    /proc/zoneinfo): its pcp lists pass every page straight through.
    """
    if managed_pages < 0:
        raise ConfigError(f"managed_pages {managed_pages} is invalid: must be >= 0")
    _check_page_size(page_size)
    batch = min(managed_pages >> 10, _SZ_1M // page_size)
    batch = max(batch // 4, 1)
    return _rounddown_pow_of_two(batch + batch // 2) - 1


def pcp_high(batch: int) -> int:
    """pcp ``high`` = 6 * batch, the 5.8-5.13 ``pageset_set_batch()`` default (378 for batch 63).

    5.14+ derives high from the low watermark instead (``zone_highsize()``); not modelled.
    """
    if batch < 0:
        raise ConfigError(f"pcp batch {batch} is invalid: must be >= 0")
    return 6 * batch


def pageset_set_batch(batch: int) -> tuple[int, int]:
    """``pageset_set_batch()`` (5.8 mm/page_alloc.c): ``pageset_update(pcp, 6 * batch,
    max(1UL, 1 * batch))``, as ``(high, batch)``: a tiny zone's batch 0 gives high 0 and a
    batch of 1."""
    return pcp_high(batch), max(1, batch)


def pcp_high_batch(
    managed_pages: int, page_size: int, batch: int | None = None, high: int | None = None
) -> tuple[int, int]:
    """A zone's pcp ``(high, batch)``: :func:`pageset_set_batch` of its
    :func:`zone_batchsize`, unless set (``vm.percpu_pagelist_*``-style overrides: a batch set
    alone brings its ``6 * batch`` high)."""
    if batch is None:
        derived_high, batch = pageset_set_batch(zone_batchsize(managed_pages, page_size))
    else:
        derived_high = pcp_high(batch)
    return (derived_high if high is None else high), batch


@attrs.frozen
class Watermarks:
    """A zone's WMARK_MIN/LOW/HIGH in pages (``zone->_watermark[]``, boost ignored)."""

    min: int
    low: int
    high: int


def compute_watermarks(
    managed_pages: int, min_pages: int, watermark_scale_factor: int = 10
) -> Watermarks:
    """Derive low/high from min as ``__setup_per_zone_wmarks()`` does (kernel.md 3.4).

    The gap is the larger of min/4 and managed * wsf / 10000 (0.1% by default), so kswapd wakes
    (below low) well before allocations dip into the min reserve. ``watermark_scale_factor`` is
    accepted in 1..3000 (5.x sysctl allows 1..1000; 6.x raised the limit to 3000).
    """
    if managed_pages < 0 or min_pages < 0:
        raise ConfigError(
            f"managed_pages {managed_pages} / min_pages {min_pages} are invalid: must be >= 0"
        )
    if not 1 <= watermark_scale_factor <= 3000:
        raise ConfigError(
            f"watermark_scale_factor {watermark_scale_factor} is invalid: allowed 1..3000"
        )
    tmp = max(min_pages // 4, managed_pages * watermark_scale_factor // 10000)
    return Watermarks(min=min_pages, low=min_pages + tmp, high=min_pages + 2 * tmp)


def min_free_kbytes_default(lowmem_kbytes: int, cap_kbytes: int = MIN_FREE_KBYTES_CAP_5X) -> int:
    """Boot-time ``vm.min_free_kbytes``: int_sqrt(lowmem_kbytes * 16), clamped.

    Models ``init_per_zone_wmark_min()``. The default cap is the 5.x 65536 because the simulation
    targets the 5.8-5.10 allocator; later kernels cap at 262144 (pass
    ``MIN_FREE_KBYTES_CAP_LATER``). The cap only bites above 256 GiB of lowmem, so the choice
    rarely matters. khugepaged's THP bump (``set_recommended_min_free_kbytes``) is not modelled,
    which is why real hosts with THP often show a larger value.
    """
    if lowmem_kbytes < 0:
        raise ConfigError(f"lowmem_kbytes {lowmem_kbytes} is invalid: must be >= 0")
    if cap_kbytes < MIN_FREE_KBYTES_FLOOR:
        raise ConfigError(f"cap_kbytes {cap_kbytes} is invalid: must be >= {MIN_FREE_KBYTES_FLOOR}")
    return min(max(math.isqrt(lowmem_kbytes * 16), MIN_FREE_KBYTES_FLOOR), cap_kbytes)


def zone_min_pages(
    min_free_kbytes: int,
    zone_managed_pages: int,
    lowmem_pages: int | None = None,
    page_size: int = 4096,
) -> int:
    """WMARK_MIN of a zone: its managed share of ``min_free_kbytes`` (``__setup_per_zone_wmarks``).

    ``lowmem_pages`` is the managed total of all non-highmem zones; it defaults to this zone's own
    size because the simulation models a single zone, which then gets all of min_free_kbytes.
    """
    _check_page_size(page_size)
    if min_free_kbytes < 0 or zone_managed_pages < 0:
        raise ConfigError(
            f"min_free_kbytes {min_free_kbytes} / zone_managed_pages {zone_managed_pages} "
            "are invalid: must be >= 0"
        )
    lowmem = zone_managed_pages if lowmem_pages is None else lowmem_pages
    if lowmem < zone_managed_pages:
        raise ConfigError(
            f"lowmem_pages {lowmem} is invalid: must be >= the zone's managed pages "
            f"{zone_managed_pages}"
        )
    if lowmem == 0:
        return 0
    pages_min = min_free_kbytes // (page_size // 1024)
    return pages_min * zone_managed_pages // lowmem


def zone_watermark_ok(
    free_pages: int,
    order: int,
    mark: int,
    alloc_high: bool,
    alloc_harder: bool,
    alloc_oom: bool,
    lowmem_reserve: int = 0,
    free_area_has_order: bool = True,
) -> bool:
    """``__zone_watermark_ok()`` of 5.x (kernel.md 3.4).

    ALLOC_HIGH (``__GFP_HIGH``) halves the mark; ALLOC_HARDER (``__GFP_ATOMIC``, RT tasks) takes a
    further quarter, ALLOC_OOM a further half, so GFP_ATOMIC may dig down to 3/8 of WMARK_MIN.
    ``alloc_oom`` implies the harder branch, as in the kernel where ``alloc_harder`` is
    ``alloc_flags & (ALLOC_HARDER | ALLOC_OOM)``. Highatomic and CMA reserves are not modelled.
    For order > 0 the caller passes whether a free block of at least that order exists in a pcp
    migratetype (:meth:`BuddyAllocator.has_free_block`).
    """
    _check_order(order)
    if mark < 0 or lowmem_reserve < 0:
        raise PageAllocError(
            f"mark {mark} / lowmem_reserve {lowmem_reserve} are invalid: must be >= 0"
        )
    min_ = mark
    free_pages -= (1 << order) - 1
    if alloc_high:
        min_ -= min_ // 2
    if alloc_harder or alloc_oom:
        min_ -= min_ // 2 if alloc_oom else min_ // 4
    if free_pages <= min_ + lowmem_reserve:
        return False
    return order == 0 or free_area_has_order


def _check_order(order: int) -> None:
    if not 0 <= order < MAX_ORDER:
        raise PageAllocError(f"order {order} is invalid: allowed 0..{MAX_ORDER - 1}")


def _check_mt(mt: int) -> None:
    if not 0 <= mt < MIGRATE_PCPTYPES:
        raise PageAllocError(
            f"migratetype {mt} is invalid: allowed 0..{MIGRATE_PCPTYPES - 1} "
            "(UNMOVABLE, MOVABLE, RECLAIMABLE)"
        )


def _can_steal_fallback(order: int, start_mt: int) -> bool:
    # can_steal_fallback(): big blocks always; unmovable/reclaimable requests always.
    return order >= PAGEBLOCK_ORDER // 2 or start_mt != MIGRATE_MOVABLE


@attrs.frozen
class FallbackSteal:
    """One ``__rmqueue_fallback()`` steal, as its ``mm_page_alloc_extfrag`` event records it.

    ``trace_mm_page_alloc_extfrag(page, order, current_order, start_migratetype,
    fallback_mt)`` runs after ``steal_suitable_fallback()``; the event's ``TP_fast_assign``
    computes ``change_ownership = (alloc_migratetype == get_pageblock_migratetype(page))``
    then, and ``TP_printk`` prints ``fragmenting = fallback_order < pageblock_order``
    (include/trace/events/kmem.h, v5.8; the same in v6.1).
    """

    #: The stolen block's head (the event's ``page``).
    pfn: int
    alloc_order: int
    fallback_order: int
    alloc_migratetype: int
    fallback_migratetype: int
    change_ownership: bool

    @property
    def fragmenting(self) -> bool:
        """``fallback_order < pageblock_order``: a foreign pageblock now holds the request."""
        return self.fallback_order < PAGEBLOCK_ORDER


def _no_movable(_start_pfn: int, _end_pfn: int) -> int:
    # A buddy allocator alone knows its free blocks only, no in-use page's type.
    return 0


class FreeList:
    """``free_area[order].free_list[migratetype]``: the head PFNs of its free blocks.

    The allocator only ever needs the lowest PFN, adds, and removals of any block (a buddy
    merged away), so a set says what is listed and a heap finds the lowest; a removal leaves
    its PFN in the heap until it surfaces (or the heap is rebuilt, when stale entries outnumber
    live ones). ``heapq`` and ``set`` run in C: a free costs a few hundred nanoseconds where a
    sorted container's Python-level insertion and removal cost microseconds.
    """

    __slots__ = ("heap", "live")

    def __init__(self, pfns: Iterable[int] = ()) -> None:
        self.live: set[int] = set(pfns)
        self.heap: list[int] = sorted(self.live)

    def add(self, pfn: int) -> None:
        self.live.add(pfn)
        heapq.heappush(self.heap, pfn)

    def remove(self, pfn: int) -> None:
        """Unlist ``pfn`` (KeyError if it is not listed)."""
        live = self.live
        live.remove(pfn)
        if len(self.heap) > 2 * len(live) + 64:
            self.heap = sorted(live)

    def first(self) -> int:
        """The lowest listed PFN (the list must not be empty)."""
        heap = self.heap
        live = self.live
        while heap[0] not in live:
            heapq.heappop(heap)
        return heap[0]

    def in_range(self, lo: int, hi: int) -> list[int]:
        """The listed PFNs in ``[lo, hi]``, lowest first (error reports only: O(n))."""
        return sorted(p for p in self.live if lo <= p <= hi)

    def __len__(self) -> int:
        return len(self.live)

    def __bool__(self) -> bool:
        return bool(self.live)

    def __iter__(self) -> Iterator[int]:
        """Lowest PFN first."""
        return iter(sorted(self.live))

    def __contains__(self, pfn: object) -> bool:
        return pfn in self.live


def _empty_free_area() -> list[list[FreeList]]:
    return [[FreeList() for _ in range(MIGRATE_PCPTYPES)] for _ in range(MAX_ORDER)]


#: ``b"\x01" * 2**order`` and ``b"\x00" * 2**order``: a block's pages in the covered map.
_COVER = tuple(b"\x01" * (1 << o) for o in range(MAX_ORDER))
_UNCOVER = tuple(b"\x00" * (1 << o) for o in range(MAX_ORDER))


def _nonneg(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 0:
        raise ConfigError(f"{attr.name} {value} is invalid: must be >= 0")


def _fraction(_inst: object, attr: attrs.Attribute[float], value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{attr.name} {value} is invalid: must be between 0.0 and 1.0")


# Validated at construction only: the counters change on every allocation and attrs'
# validate-on-setattr would cost more than the operation itself (the pcp hit is the hot path).
@attrs.define(eq=False, on_setattr=attrs.setters.NO_OP)
class BuddyAllocator:
    """One zone's buddy free lists, ``zone->free_area[order].free_list[migratetype]``, and the
    migratetype of every pageblock (``pageblock_flags``).

    Boot layout follows ``memblock_free_all()``: the range is cut into the largest naturally
    aligned blocks (at most order MAX_ORDER-1) and every pageblock starts MOVABLE, as
    ``memmap_init_zone()`` marks them. ``unmovable_fraction`` (default 0, the kernel's boot state)
    hands the lowest-PFN blocks and their pageblocks to UNMOVABLE until that share of pages is
    reached, to model a zone whose unmovable pageblocks already exist after boot-time
    allocations (a pageblock holds one migratetype: its small blocks at a zone edge follow
    its first).

    Fallback is ``__rmqueue_fallback()`` of v5.8 (read in v6.1, the same): the largest
    block of the first ``FALLBACKS`` type that has one, or for a MOVABLE request that cannot
    steal (block order < pageblock_order/2) the smallest; then ``steal_suitable_fallback()``:
    a block of a pageblock or more retypes all its pageblocks (``change_pageblock_range``);
    a smaller one moves alone when it cannot steal, else ``move_freepages_block()`` moves every
    free block of its pageblock to the requester's lists and the pageblock changes type when
    free plus "alike" pages reach half of it. Each steal is kept in :attr:`extfrag` (the
    ``mm_page_alloc_extfrag`` event) until the zone's owner consumes it.

    Deliberate simplifications (the kernel facts the simulation needs survive them):

    * Lists (:class:`FreeList`) always hand out the lowest PFN, not the list head, so runs are
      deterministic and reproducible.
    * :meth:`free` (``__free_one_page()``) puts a block on the migratetype its caller passes,
      as the kernel's does; the page allocator passes the pageblock's (``free_one_page()``,
      ``__free_pages_ok()``) or the pcp list's (``free_pcppages_bulk()``), and a block merges
      with its buddy (``pfn ^ (1 << order)``) whatever list the buddy is on. So a free block
      may sit on another migratetype's list than its pageblock's, as in the kernel before
      v6.10: after a single-block steal, after a whole-pageblock move that did not claim the
      pageblock, after a pcp drain of a page whose pageblock was retyped meanwhile, and in a
      merged block above pageblock_order whose pageblocks differ.
    * Which in-use pages are movable (``PageLRU()``/``__PageMovable()`` in
      ``move_freepages()``) is :attr:`nr_movable`'s answer: the memory map's when the page
      allocator owns this zone, none for a bare buddy allocator.
    * HIGHATOMIC, CMA, ISOLATE and ALLOC_NOFRAGMENT are absent. A steal of a block below
      ``pageblock_order`` is counted in ``nr_boosting_steals``: those are the steals for which
      ``steal_suitable_fallback()`` calls ``boost_watermark()`` (a block of a whole pageblock
      or more is re-typed instead); the zone's owner applies the boost
      (:meth:`Zone.boost_watermark`).
    """

    start_pfn: int = attrs.field(validator=_nonneg)
    nr_pages: int = attrs.field(validator=_nonneg)
    unmovable_fraction: float = attrs.field(default=0.0, validator=_fraction)
    free_area: list[list[FreeList]] = attrs.field(
        init=False, factory=_empty_free_area, repr=False
    )
    #: ``NR_FREE_PAGES``: pages on the buddy lists (pcp pages do not count, as in 5.x).
    nr_free: int = attrs.field(init=False, default=0)
    #: Blocks taken from another migratetype's list (the ``mm_page_alloc_extfrag`` event count).
    nr_fallback_steals: int = attrs.field(init=False, default=0)
    #: Of those, the ones of a block smaller than a pageblock (each boosts the watermark).
    nr_boosting_steals: int = attrs.field(init=False, default=0)
    #: ``get_pageblock_migratetype()``: one byte per pageblock overlapping the zone, indexed
    #: ``(pfn >> PAGEBLOCK_ORDER) - pb_base`` as ``pfn_to_bitidx()`` indexes the bitmap from
    #: the zone start rounded down to a pageblock.
    pageblock_mt: bytearray = attrs.field(init=False, factory=bytearray, repr=False)
    #: ``zone_start_pfn >> pageblock_order``.
    pb_base: int = attrs.field(init=False, default=0)
    #: Steals not yet consumed by the zone's owner, oldest first (the page allocator traces
    #: them and applies their boost under ``zone->lock``, then clears the list).
    extfrag: list[FallbackSteal] = attrs.field(init=False, factory=list, repr=False)
    #: In-use movable pages in ``[start_pfn, end_pfn)`` (``move_freepages()``'s
    #: ``num_movable``); the page allocator sets the memory map's count.
    nr_movable: Callable[[int, int], int] = attrs.field(
        init=False, default=_no_movable, repr=False
    )
    # head PFN -> (order, migratetype) of every free block, for O(1) buddy lookup.
    _heads: dict[int, tuple[int, int]] = attrs.field(init=False, factory=dict, repr=False)
    # One byte per page of the zone, 1 inside a free block: a double free is one lookup
    # (order 0) or one C-level scan, not a dict lookup per order.
    _covered: bytearray = attrs.field(init=False, factory=bytearray, repr=False)

    def __attrs_post_init__(self) -> None:
        staged: list[list[list[int]]] = [
            [[] for _ in range(MIGRATE_PCPTYPES)] for _ in range(MAX_ORDER)
        ]
        target_unmovable = round(self.unmovable_fraction * self.nr_pages)
        unmovable = 0
        pfn, end = self.start_pfn, self.end_pfn
        base = self.pb_base = pfn >> PAGEBLOCK_ORDER
        nr_pb = ((end - 1) >> PAGEBLOCK_ORDER) - base + 1 if self.nr_pages else 0
        pbmt = self.pageblock_mt = bytearray((MIGRATE_MOVABLE,)) * nr_pb
        last_pb = -1
        while pfn < end:
            order = MAX_ORDER - 1 if pfn == 0 else min(MAX_ORDER - 1, (pfn & -pfn).bit_length() - 1)
            while pfn + (1 << order) > end:
                order -= 1
            pb = (pfn >> PAGEBLOCK_ORDER) - base
            if pb == last_pb:
                mt = pbmt[pb]  # a small block in a pageblock an earlier block typed
            else:
                mt = MIGRATE_UNMOVABLE if unmovable < target_unmovable else MIGRATE_MOVABLE
            if mt == MIGRATE_UNMOVABLE:
                unmovable += 1 << order
            last_pb = ((pfn + (1 << order) - 1) >> PAGEBLOCK_ORDER) - base
            pbmt[pb : last_pb + 1] = bytes((mt,)) * (last_pb + 1 - pb)
            staged[order][mt].append(pfn)
            self._heads[pfn] = (order, mt)
            pfn += 1 << order
        for order in range(MAX_ORDER):
            for mt in range(MIGRATE_PCPTYPES):
                self.free_area[order][mt] = FreeList(staged[order][mt])
        self.nr_free = self.nr_pages
        self._covered = bytearray(b"\x01" * self.nr_pages)

    @property
    def end_pfn(self) -> int:
        """One past the zone's last PFN."""
        return self.start_pfn + self.nr_pages

    def get_pageblock_migratetype(self, pfn: int) -> int:
        """``get_pageblock_migratetype()``: the migratetype of the pageblock holding ``pfn``."""
        return self.pageblock_mt[(pfn >> PAGEBLOCK_ORDER) - self.pb_base]

    def set_pageblock_migratetype(self, pfn: int, mt: int) -> None:
        """``set_pageblock_migratetype()``: retype the pageblock holding ``pfn``."""
        _check_mt(mt)
        self.pageblock_mt[(pfn >> PAGEBLOCK_ORDER) - self.pb_base] = mt

    def change_pageblock_range(self, pfn: int, order: int, mt: int) -> None:
        """``change_pageblock_range()``: retype the 2^(order - pageblock_order) pageblocks of a
        block of at least a pageblock."""
        i = (pfn >> PAGEBLOCK_ORDER) - self.pb_base
        n = 1 << (order - PAGEBLOCK_ORDER)
        self.pageblock_mt[i : i + n] = bytes((mt,)) * n

    def rmqueue_smallest(self, order: int, mt: int) -> int | None:
        """``__rmqueue_smallest()``: the smallest block of ``mt`` >= order, split by ``expand()``.

        The low half is kept and each upper half goes back on the list one order down, so
        consecutive order-0 requests walk PFNs upward through a block.
        """
        if not (0 <= order < MAX_ORDER and 0 <= mt < MIGRATE_PCPTYPES):
            _check_order(order)
            _check_mt(mt)
        area = self.free_area
        for cur in range(order, MAX_ORDER):
            lst = area[cur][mt]
            live = lst.live
            if live:
                # _remove() of the list's lowest PFN, taken off the heap at once
                heap = lst.heap
                pfn = heapq.heappop(heap)
                while pfn not in live:
                    pfn = heapq.heappop(heap)
                live.remove(pfn)
                heads = self._heads
                del heads[pfn]
                # expand(): the upper halves go back, still free and covered; only the
                # 2^order pages handed out leave nr_free and the covered map
                while cur > order:
                    cur -= 1
                    half = pfn + (1 << cur)
                    lst = area[cur][mt]
                    lst.live.add(half)
                    heapq.heappush(lst.heap, half)
                    heads[half] = (cur, mt)
                self.nr_free -= 1 << order
                i = pfn - self.start_pfn
                self._covered[i : i + (1 << order)] = _UNCOVER[order]
                return pfn
        return None

    def rmqueue_pages(self, mt: int, count: int) -> list[int]:
        """``count`` x :meth:`rmqueue` ``(0, mt)`` (``rmqueue_bulk()``'s loop), stopping at the
        first that finds nothing: the pages, in order.

        When no list of ``mt`` below order ``cur`` holds a block, ``__rmqueue_smallest()``
        splits the lowest order-``cur`` block and the order-0 requests that follow walk its
        pages upward: each upper half ``expand()`` listed is then the only block of its
        order until the walk splits it. So up to ``2**cur`` pages come from that block at
        once, and the rest of it is left as the walk leaves it: the aligned blocks of its
        binary decomposition; order-0 blocks are taken lowest first, in one loop. The same
        pages, free lists, ``nr_free`` and covered map as page by page (only stale heap
        entries the walk would have popped stay, which no answer depends on); the lookups
        per page are what a pcp refill would cost else.
        """
        got: list[int] = []
        if not 0 <= mt < MIGRATE_PCPTYPES:
            _check_mt(mt)
        area = self.free_area
        heads = self._heads
        while len(got) < count:
            cur = 0
            while cur < MAX_ORDER and not area[cur][mt].live:
                cur += 1
            if cur == MAX_ORDER:
                # nothing of mt: one request, with the fallback steal
                pfn = self.rmqueue(0, mt)
                if pfn is None:
                    break
                got.append(pfn)
                continue
            if cur == 0:
                # order-0 blocks: each request takes the lowest one
                lst = area[0][mt]
                live = lst.live
                heap = lst.heap
                covered = self._covered
                start = self.start_pfn
                while live and len(got) < count:
                    pfn = heapq.heappop(heap)
                    if pfn in live:
                        live.remove(pfn)
                        del heads[pfn]
                        self.nr_free -= 1
                        covered[pfn - start] = 0
                        got.append(pfn)
                continue
            lst = area[cur][mt]
            live = lst.live
            heap = lst.heap
            pfn = heapq.heappop(heap)
            while pfn not in live:
                pfn = heapq.heappop(heap)
            live.remove(pfn)
            del heads[pfn]
            n = count - len(got)
            if n > 1 << cur:
                n = 1 << cur
            got.extend(range(pfn, pfn + n))
            self.nr_free -= n
            i = pfn - self.start_pfn
            self._covered[i : i + n] = _UNCOVER[0] * n
            # what the walk leaves of the block: from offset n, the largest aligned blocks
            off = n
            while off < 1 << cur:
                order = (off & -off).bit_length() - 1
                half = pfn + off
                lst = area[order][mt]
                lst.live.add(half)
                heapq.heappush(lst.heap, half)
                heads[half] = (order, mt)
                off += 1 << order
        return got

    def _find_fallback(self, order: int, start_mt: int) -> int | None:
        # find_suitable_fallback(only_stealable=false): first non-empty type in FALLBACKS order.
        for fb in FALLBACKS[start_mt]:
            if self.free_area[order][fb]:
                return fb
        return None

    def _steal_fallback(self, order: int, start_mt: int) -> bool:
        """``__rmqueue_fallback()`` without ALLOC_NOFRAGMENT: pick a foreign block, steal it
        (:meth:`steal_suitable_fallback`) and record the ``mm_page_alloc_extfrag`` event."""
        found: tuple[int, int] | None = None
        for cur in range(MAX_ORDER - 1, order - 1, -1):
            fb = self._find_fallback(cur, start_mt)
            if fb is None:
                continue
            if not _can_steal_fallback(cur, start_mt) and cur > order:
                # find_smallest: a MOVABLE request should not fragment a big foreign block.
                for small in range(order, MAX_ORDER):
                    fb_small = self._find_fallback(small, start_mt)
                    if fb_small is not None:
                        found = (small, fb_small)
                        break
            else:
                found = (cur, fb)
            break
        if found is None:
            return False
        cur, fb = found
        pfn = self.free_area[cur][fb].first()
        self.steal_suitable_fallback(pfn, cur, fb, start_mt, _can_steal_fallback(cur, start_mt))
        steal = FallbackSteal(
            pfn, order, cur, start_mt, fb, start_mt == self.get_pageblock_migratetype(pfn)
        )
        self.extfrag.append(steal)
        self.nr_fallback_steals += 1
        if steal.fragmenting:
            self.nr_boosting_steals += 1
        return True

    def steal_suitable_fallback(
        self, pfn: int, order: int, mt: int, start_type: int, whole_block: bool
    ) -> None:
        """``steal_suitable_fallback()`` (v5.8, v6.1) for the free block ``pfn`` of ``order``
        on ``mt``'s list; its ``boost_watermark()`` is the owner's (``nr_boosting_steals``).

        A block of a pageblock or more retypes its pageblocks and moves alone. Below that, a
        block that may not steal (``!whole_block``) moves alone; else every free block of its
        pageblock moves (:meth:`move_freepages_block`) and the pageblock is claimed for
        ``start_type`` when free and alike pages make half of it. Alike pages are the movable
        in-use ones for a MOVABLE request, the non-movable in-use ones for another request
        stealing from a MOVABLE pageblock, none otherwise.
        """
        old_block_type = self.get_pageblock_migratetype(pfn)
        if order >= PAGEBLOCK_ORDER:
            self.change_pageblock_range(pfn, order, start_type)
        elif whole_block:
            free_pages, movable_pages = self.move_freepages_block(pfn, start_type)
            if free_pages:  # zero when the pageblock leaves the zone
                if start_type == MIGRATE_MOVABLE:
                    alike_pages = movable_pages
                elif old_block_type == MIGRATE_MOVABLE:
                    alike_pages = PAGEBLOCK_NR_PAGES - (free_pages + movable_pages)
                else:
                    alike_pages = 0
                if free_pages + alike_pages >= PAGEBLOCK_NR_PAGES // 2:
                    self.set_pageblock_migratetype(pfn, start_type)
                return
        self._move_to_free_list(pfn, order, mt, start_type)

    def _move_to_free_list(self, pfn: int, order: int, old_mt: int, mt: int) -> None:
        """``move_to_free_list()``: a free block onto another migratetype's list."""
        if old_mt != mt:
            self.free_area[order][old_mt].remove(pfn)
            self.free_area[order][mt].add(pfn)
            self._heads[pfn] = (order, mt)

    def move_freepages_block(self, pfn: int, mt: int) -> tuple[int, int]:
        """``move_freepages_block()``: every free block of ``pfn``'s pageblock onto ``mt``'s
        lists; returns the pages moved and the in-use movable pages of the pageblock.

        As in the kernel, the scan starts at ``pfn`` when the pageblock begins before the zone,
        and nothing moves (0, 0) when it ends after it. Pages on pcp lists are neither free
        here (not ``PageBuddy``) nor movable.
        """
        start = pfn & ~(PAGEBLOCK_NR_PAGES - 1)
        end = start + PAGEBLOCK_NR_PAGES
        if start < self.start_pfn:
            start = pfn
        if end > self.end_pfn:
            return 0, 0
        base = self.start_pfn
        covered = self._covered
        heads = self._heads
        moved = 0
        # Inside the pageblock every free block is smaller than it and aligned, so the first
        # covered page after an uncovered one (or a block's end) is a block's head.
        j = covered.find(1, start - base, end - base)
        while j >= 0:
            head = base + j
            order, old_mt = heads[head]
            self._move_to_free_list(head, order, old_mt, mt)
            moved += 1 << order
            j = covered.find(1, j + (1 << order), end - base)
        return moved, self.nr_movable(start, end)

    def rmqueue(self, order: int, mt: int) -> int | None:
        """``__rmqueue()``: own migratetype first, then steal per ``FALLBACKS`` and retry.

        Returns the head PFN of a 2^order block, or None when no list can serve the order.
        """
        pfn = self.rmqueue_smallest(order, mt)
        if pfn is None and self._steal_fallback(order, mt):
            pfn = self.rmqueue_smallest(order, mt)
        return pfn

    def reserve(self, nr_pages: int, mt: int) -> list[tuple[int, int]]:
        """Take ``nr_pages`` as the largest blocks that fit, returning ``(pfn, order)`` blocks.

        For modelling memory already in use by other kernel users at start-up: hundreds of
        thousands of order-0 ``rmqueue`` calls would cost seconds, a few hundred big blocks
        cost nothing. Fewer pages come back when the zone runs dry.
        """
        if nr_pages < 0:
            raise PageAllocError(f"nr_pages {nr_pages} is invalid: must be >= 0")
        _check_mt(mt)
        blocks: list[tuple[int, int]] = []
        remaining = nr_pages
        for order in range(MAX_ORDER - 1, -1, -1):
            while remaining >= 1 << order:
                pfn = self.rmqueue(order, mt)
                if pfn is None:
                    break
                blocks.append((pfn, order))
                remaining -= 1 << order
        return blocks

    def free(self, pfn: int, order: int, mt: int) -> None:
        """``__free_one_page()``: put a block back and merge with free buddies up to MAX_ORDER-1.

        Freeing a PFN outside the zone or overlapping a free block raises ``MemoryDebugError``
        (the kernel would corrupt its lists; the simulation must notice).
        """
        if not (0 <= order < MAX_ORDER and 0 <= mt < MIGRATE_PCPTYPES):
            _check_order(order)
            _check_mt(mt)
        size = 1 << order
        if pfn & (size - 1):
            raise PageAllocError(f"pfn {pfn:#x} is not aligned to order {order}")
        start = self.start_pfn
        if pfn < start or pfn + size > start + self.nr_pages:
            raise MemoryDebugError(
                f"foreign free: pfn {pfn:#x} order {order} is outside the zone "
                f"[{start:#x}, {self.end_pfn:#x})"
            )
        i = pfn - start
        covered = self._covered
        if (covered.find(1, i, i + size) >= 0) if order else covered[i]:
            self._double_free(pfn, order)
        # The freed pages join nr_free and the covered map; a merged buddy was already
        # counted and covered, so merging only moves list entries.
        self.nr_free += size
        covered[i : i + size] = _COVER[order]
        self._merge(pfn, order, mt)

    def _merge(self, pfn: int, order: int, mt: int) -> None:
        """The end of ``__free_one_page()``, for a checked block already counted free: merged
        with free buddies up to MAX_ORDER-1, the result onto ``mt``'s list."""
        heads = self._heads
        area = self.free_area
        while order < MAX_ORDER - 1:
            buddy = pfn ^ (1 << order)
            entry = heads.get(buddy)
            if entry is None or entry[0] != order:
                break
            area[order][entry[1]].remove(buddy)
            del heads[buddy]
            pfn &= buddy
            order += 1
        lst = area[order][mt]
        lst.live.add(pfn)
        heapq.heappush(lst.heap, pfn)
        heads[pfn] = (order, mt)

    def _double_free(self, pfn: int, order: int) -> None:
        """Raise the double-free report for a block the covered map says overlaps a free one:
        the block containing ``pfn`` first, else the lowest-order free block inside."""
        # A free block containing pfn starts at pfn rounded down to its own order.
        for o in range(MAX_ORDER):
            head = pfn & ~((1 << o) - 1)
            entry = self._heads.get(head)
            if entry is not None and entry[0] >= o:
                raise MemoryDebugError(
                    f"double free: pfn {pfn:#x} order {order} overlaps the free block "
                    f"{head:#x} order {entry[0]}"
                )
        # Smaller free blocks strictly inside the freed range.
        last = pfn + (1 << order) - 1
        for o in range(order):
            for mt in range(MIGRATE_PCPTYPES):
                for head in self.free_area[o][mt].in_range(pfn, last):
                    raise MemoryDebugError(
                        f"double free: pfn {pfn:#x} order {order} contains the free block "
                        f"{head:#x} order {o}"
                    )
        raise SimulationError(f"buddy: pfn {pfn:#x} is covered but no free block overlaps it")

    def free_bulk(self, pages: Iterable[tuple[int, int]]) -> int:
        """Free order-0 ``(pfn, migratetype)`` pairs, as ``free_pcppages_bulk()`` hands them over
        (each with its pcp migratetype, ``get_pcppage_migratetype()``, not its pageblock's).

        Returns the number of pages freed.
        """
        start = self.start_pfn
        nr = self.nr_pages
        covered = self._covered
        n = 0
        for pfn, mt in pages:
            i = pfn - start
            if 0 <= i < nr and 0 <= mt < MIGRATE_PCPTYPES and not covered[i]:
                # free(pfn, 0, mt) of a page its checks pass (inside the zone, a pcp list's
                # migratetype, not free): one page more, covered, merged
                self.nr_free += 1
                covered[i] = 1
                self._merge(pfn, 0, mt)
            else:
                self.free(pfn, 0, mt)  # raises what free() raises
            n += 1
        return n

    def has_free_block(self, order: int) -> bool:
        """Whether any pcp migratetype has a free block of at least ``order`` (watermark check)."""
        _check_order(order)
        return any(
            self.free_area[o][mt] for o in range(order, MAX_ORDER) for mt in range(MIGRATE_PCPTYPES)
        )

    def blocks(self) -> list[tuple[int, int, int]]:
        """Every free block as ``(pfn, order, migratetype)``, lowest PFN first."""
        return sorted((pfn, order, mt) for pfn, (order, mt) in self._heads.items())

    def check(self) -> None:
        """Raise ``SimulationError`` unless the free lists are self-consistent.

        Checked: lists and the head index agree; blocks are aligned, inside the zone and disjoint;
        ``nr_free`` is their sum; no two free buddies of the same order were left unmerged; the
        covered map marks exactly the pages of free blocks.
        """
        listed = 0
        for order in range(MAX_ORDER):
            for mt in range(MIGRATE_PCPTYPES):
                for pfn in self.free_area[order][mt]:
                    listed += 1
                    if self._heads.get(pfn) != (order, mt):
                        raise SimulationError(
                            f"buddy: pfn {pfn:#x} on list order {order} mt {mt} but indexed as "
                            f"{self._heads.get(pfn)}"
                        )
        if listed != len(self._heads):
            raise SimulationError(
                f"buddy: {len(self._heads)} indexed blocks but {listed} on the free lists"
            )
        total = 0
        prev_end = self.start_pfn
        for pfn, order, _mt in self.blocks():
            size = 1 << order
            if pfn & (size - 1):
                raise SimulationError(f"buddy: free block {pfn:#x} not aligned to order {order}")
            if pfn < prev_end:
                raise SimulationError(f"buddy: free block {pfn:#x} overlaps the previous block")
            if pfn + size > self.end_pfn:
                raise SimulationError(f"buddy: free block {pfn:#x} order {order} leaves the zone")
            if order < MAX_ORDER - 1:
                buddy = self._heads.get(pfn ^ size)
                if buddy is not None and buddy[0] == order:
                    raise SimulationError(
                        f"buddy: free block {pfn:#x} and its buddy {pfn ^ size:#x} (order "
                        f"{order}) were not merged"
                    )
            prev_end = pfn + size
            total += size
        if total != self.nr_free:
            raise SimulationError(f"buddy: nr_free {self.nr_free} but the blocks hold {total}")
        covered = bytearray(self.nr_pages)
        for pfn, order, _mt in self.blocks():
            i = pfn - self.start_pfn
            covered[i : i + (1 << order)] = _COVER[order]
        if covered != self._covered:
            raise SimulationError("buddy: the covered map disagrees with the free blocks")


def _three_deques() -> list[deque[int]]:
    return [deque() for _ in range(MIGRATE_PCPTYPES)]


def _batch_validator(_inst: object, attr: attrs.Attribute[int], value: int) -> None:
    if value < 1:
        raise ConfigError(f"pcp batch {value} is invalid: must be >= 1")


@attrs.define(kw_only=True, on_setattr=attrs.setters.NO_OP)
class PerCpuPages:
    """``struct per_cpu_pages`` of 5.8-5.12: order-0 only, one list per pcp migratetype.

    List heads are hot: frees push at the head and allocations pop the head, while
    ``rmqueue_bulk`` refills append at the tail and drains take from the tail (coldest first),
    matching ``list_add``/``list_add_tail``/``list_last_entry`` in kernel.md 3.3.
    ``count`` is kept equal to the total list length by every method here.
    """

    high: int = attrs.field(validator=_nonneg)
    batch: int = attrs.field(validator=_batch_validator)
    count: int = attrs.field(default=0, validator=_nonneg)
    lists: list[deque[int]] = attrs.field(factory=_three_deques)

    def __attrs_post_init__(self) -> None:
        if len(self.lists) != MIGRATE_PCPTYPES:
            raise ConfigError(
                f"pcp lists has {len(self.lists)} entries: must have {MIGRATE_PCPTYPES}"
            )
        total = sum(len(lst) for lst in self.lists)
        if self.count != total:
            raise ConfigError(f"pcp count {self.count} disagrees with {total} listed pages")

    @classmethod
    def for_zone(cls, managed_pages: int, page_size: int = 4096) -> PerCpuPages:
        """An empty pcp with the 5.8 defaults for a zone of that size (63/378 for >= 1 GiB)."""
        high, batch = pcp_high_batch(managed_pages, page_size)
        return cls(high=high, batch=batch)

    @property
    def over_high(self) -> bool:
        """``pcp->count >= pcp->high``: the free path must drain ``batch`` pages now."""
        return self.count >= self.high

    def pop(self, mt: int) -> int | None:
        """Head page of list ``mt`` (``__rmqueue_pcplist`` without the refill), or None."""
        _check_mt(mt)
        lst = self.lists[mt]
        if not lst:
            return None
        self.count -= 1
        return lst.popleft()

    def pop_any_typed(self, start_mt: int) -> tuple[int, int] | None:
        """Like :meth:`pop_any`, also returning the list's migratetype for the later free."""
        _check_mt(start_mt)
        for mt in range(start_mt, MIGRATE_PCPTYPES):
            pfn = self.pop(mt)
            if pfn is not None:
                return pfn, mt
        return None

    def pop_any(self, start_mt: int) -> int | None:
        """The RFC's ``__GFP_FAST_TRY`` loop: lists ``start_mt .. MIGRATE_PCPTYPES-1``, no wrap.

        The patch iterates ``for (i = migratetype; i < MIGRATE_PCPTYPES; i++)``, so UNMOVABLE (0)
        requests may take any list but a RECLAIMABLE (2) request only its own.
        """
        found = self.pop_any_typed(start_mt)
        return None if found is None else found[0]

    def push(self, pfn: int, mt: int) -> None:
        """Free one page to the head of list ``mt`` (``free_unref_page_commit``).

        The caller checks :attr:`over_high` afterwards and drains ``batch`` pages if set.
        """
        _check_mt(mt)
        self.lists[mt].appendleft(pfn)
        self.count += 1

    def refill(self, pfns: Iterable[int], mt: int) -> int:
        """Append pages from ``rmqueue_bulk`` at the tail of list ``mt``; returns how many."""
        _check_mt(mt)
        lst = self.lists[mt]
        before = len(lst)
        lst.extend(pfns)
        added = len(lst) - before
        self.count += added
        return added

    def take_for_drain(self, batch: int) -> list[tuple[int, int]]:
        """Remove up to ``batch`` pages as ``free_pcppages_bulk()`` picks them; ``(pfn, mt)`` each.

        Round-robin over the lists starting after UNMOVABLE, tail (coldest) first. ``batch_free``
        grows with each list visited, so fuller lists give more pages per visit; when only one
        list is non-empty it is emptied up to the remaining count. Leftover ``batch_free`` carries
        over between visits as in the kernel loop.
        """
        if batch < 0:
            raise PageAllocError(f"drain batch {batch} is invalid: must be >= 0")
        to_free = min(batch, self.count, sum(len(lst) for lst in self.lists))
        out: list[tuple[int, int]] = []
        mt = 0
        batch_free = 0
        while to_free:
            while True:
                batch_free += 1
                mt = (mt + 1) % MIGRATE_PCPTYPES
                if self.lists[mt]:
                    break
            lst = self.lists[mt]
            if batch_free == MIGRATE_PCPTYPES:
                batch_free = to_free
            while True:
                out.append((lst.pop(), mt))
                self.count -= 1
                to_free -= 1
                batch_free -= 1
                if not (to_free and batch_free and lst):
                    break
        return out

    def check(self) -> None:
        """Raise ``SimulationError`` unless ``count`` equals the number of listed pages."""
        total = sum(len(lst) for lst in self.lists)
        if total != self.count:
            raise SimulationError(f"pcp: count {self.count} but {total} pages listed")


@attrs.define(eq=False)
class Zone:
    """``struct zone`` as far as the model needs it: buddy lists, watermarks, ``zone->lock``,
    and the watermark boost of 5.1+ (kernel.md 8.2).

    ``watermark_boost`` is added to every watermark the allocator and kswapd check
    (``wmark_pages()`` is ``_watermark[i] + watermark_boost``); ``boosted`` is the
    ``ZONE_BOOSTED_WATERMARK`` bit of ``zone->flags``, which ``rmqueue()`` tests and clears.
    """

    name: str
    buddy: BuddyAllocator
    wmark: Watermarks
    #: ``zone->lock`` (a ``spinlock_t``), the lock the RFC is about.
    lock: Lock
    managed_pages: int
    #: ``vm.watermark_boost_factor`` (0 disables boosting).
    watermark_boost_factor: int = WATERMARK_BOOST_FACTOR
    #: ``zone->watermark_boost`` in pages (changed under ``zone->lock``).
    watermark_boost: int = 0
    #: ``ZONE_BOOSTED_WATERMARK``.
    boosted: bool = False

    def boost_watermark(self) -> bool:
        """``boost_watermark()`` of 5.1-6.x ``mm/page_alloc.c``: one pageblock more, capped.

        Called for a fragmenting fallback steal (``steal_suitable_fallback()``) with
        ``zone->lock`` held. Nothing happens when the factor is 0 or the zone holds fewer than
        four pageblocks ("boosting the watermark can cause an out of memory situation
        immediately" on small machines); the cap is ``high * factor / 10000`` (150% of the
        high watermark by default) but at least one pageblock. Returns whether it boosted.
        """
        if not self.watermark_boost_factor or self.managed_pages < PAGEBLOCK_NR_PAGES * 4:
            return False
        max_boost = self.wmark.high * self.watermark_boost_factor // 10000
        if not max_boost:
            return False
        max_boost = max(PAGEBLOCK_NR_PAGES, max_boost)
        self.watermark_boost = min(self.watermark_boost + PAGEBLOCK_NR_PAGES, max_boost)
        return True

    @classmethod
    def setup(
        cls,
        start_pfn: int,
        nr_pages: int,
        lock: Lock,
        *,
        page_size: int,
        min_free_kbytes: int | None,
        watermark_scale_factor: int,
        watermark_boost_factor: int = WATERMARK_BOOST_FACTOR,
    ) -> Zone:
        """``free_area_init_core()`` + ``setup_per_zone_wmarks()`` for one ZONE_NORMAL."""
        min_kb = (
            min_free_kbytes
            if min_free_kbytes is not None
            else min_free_kbytes_default(nr_pages * (page_size // 1024))
        )
        wmark = compute_watermarks(
            nr_pages,
            zone_min_pages(min_kb, nr_pages, page_size=page_size),
            watermark_scale_factor,
        )
        return cls(
            "Normal",
            BuddyAllocator(start_pfn, nr_pages),
            wmark,
            lock,
            nr_pages,
            watermark_boost_factor=watermark_boost_factor,
        )
