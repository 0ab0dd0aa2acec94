"""kmalloc caches on top of the simulated page allocator, with SLUB's bulk free and KASAN checks.

Size classes are SLUB's kmalloc caches (kmalloc-8 ... kmalloc-2*PAGE_SIZE, with the 96 and 192
odd sizes); bigger requests are "large kmalloc", whole compound pages. A slab is one page block
cut into equal objects; its state is one ``bytearray`` (a byte per object) plus a free-index
stack, so a million live objects cost about a megabyte and no Python object each.

Why the bulk free is cheaper (kernel.md 4): ``kfree_bulk`` walks the pointer array backwards
with SLUB's ``build_detached_freelist`` (look-ahead of 3), groups the objects of one slab page and
hands each group over with *one* synchronisation instead of one per object. The simulated cost
is ``kfree_bulk_call_ns`` per group (slab page touched) plus ``kfree_bulk_per_object_ns`` per
object, against ``kfree_ns`` (+ ``cache_miss_ns`` for callers that chased an ``rcu_head``) per
single ``kfree``.

Which slab a CPU allocates from and where a freed object's slab goes are SLUB's lists, per
CPU and per node (:mod:`rcukit.mm.slub_partial`): cpu slabs, per-CPU partial lists, the node
partial list and ``min_partial``. Slab metadata changes are lockless cmpxchg in SLUB's fast
paths and have no timing effect here; the node ``list_lock`` is not modelled.
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Sequence
from itertools import compress, pairwise
from operator import attrgetter, is_, length_hint
from typing import TYPE_CHECKING, TypeVar, cast, overload

from rcukit.errors import MemoryDebugError, PageAllocError
from rcukit.mm.fault import (
    FreedObject,
    Quarantine,
    RawSite,
    Site,
    caller_site,
    memory_error,
    raw_site,
)
from rcukit.mm.gfp import GFP
from rcukit.mm.slub_partial import (
    cpu_partial_limit,
    flush_cpu_slab,
    get_partial,
    min_partial,
    slab_free_list_step,
)
from rcukit.sched.sim import Task
from rcukit.trace.events import symbol_offset

if TYPE_CHECKING:
    from rcukit.mm.mm import Mm

#: ``kmalloc(0)`` returns this non-NULL poison pointer; freeing it is a no-op.
ZERO_SIZE_PTR = 16
#: ``slub_max_order``.
SLUB_MAX_ORDER = 3

#: Pointer arrays are read as one little-endian integer (lane k = bits 64k .. 64k+63);
#: a big-endian host byte-swaps them first.
_BIG_ENDIAN = sys.byteorder == "big"

_ZERO = int(GFP.ZERO)
_COMP = int(GFP.COMP)
_NOWARN_NORETRY = int(GFP.NOWARN | GFP.NORETRY)
_NOFAIL = int(GFP.NOFAIL)

#: 1 in a little-endian 64-bit lane.
_LANE_ONE = (1).to_bytes(8, "little")


class Slab:
    """One slab page block: objects of ``cache.size`` from ``base``; ``used[i]`` = allocated."""

    __slots__ = (
        "base", "cache", "freelist", "fresh", "frozen", "inuse", "nobj", "on_partial", "order",
        "pfn", "pobjects", "pointers", "used",
    )

    def __init__(
        self, cache: KmemCache, pfn: int, order: int, base: int, nobj: int, whole: bool = False
    ) -> None:
        self.cache = cache
        self.pfn = pfn
        self.order = order
        self.base = base
        self.nobj = nobj
        self.freelist: list[int]
        if whole:
            # every object handed out at once (SlabAllocator.kmalloc_refill_nowait's
            # whole_below): what nobj kmallocs leave, without the freelist they would empty
            self.used = bytearray(cache.allocated[nobj])
            self.freelist = []
            self.inuse = nobj
        else:
            self.used = bytearray(nobj)
            # Pop from the end: lowest index first on a fresh slab, LIFO reuse afterwards.
            self.freelist = (
                cache.descending[:] if nobj == cache.nobj else list(range(nobj - 1, -1, -1))
            )
            self.inuse = 0
        #: On the node partial list (``kmem_cache_node->partial``).
        self.on_partial = False
        #: A cpu slab or on a per-CPU partial list: frees leave it where it is.
        self.frozen = False
        #: Before 5.16: free objects on the per-CPU partial list up to this slab, counted when
        #: it was put there (``page->pobjects``).
        self.pobjects = 0
        #: Nothing was freed back yet: the freelist is still the fresh descending one with its
        #: tail popped, so any tail of it pops as consecutive indices (kmalloc_run skips the
        #: comparison). Every path that pushes onto the freelist clears it.
        self.fresh = True
        #: Every object's pointer as a native 8-byte array's bytes, made by the first run-based
        #: flood that stores this slab's objects in a block (:meth:`SlabAllocator.pointers`).
        self.pointers: bytes | None = None


class KmemCache:
    """One ``kmalloc-<size>`` cache: its object size, slab order and slab lists
    (:mod:`rcukit.mm.slub_partial`)."""

    __slots__ = (
        "allocated", "cpu_partial", "cpu_partial_limit", "cpu_partial_objects", "cpu_slab",
        "descending", "freed", "lane_offsets", "lane_ones", "min_partial", "name", "nobj",
        "nr_slabs", "order", "partial", "size", "size_shift",
    )

    def __init__(
        self,
        size: int,
        order: int,
        page_size: int,
        nr_cpus: int = 1,
        kernel: tuple[int, int] = (6, 1),
        cpu_partial: bool = True,
    ) -> None:
        self.name = f"kmalloc-{size // 1024}k" if size >= 8192 else f"kmalloc-{size}"
        self.size = size
        self.order = order
        self.nobj = (page_size << order) // size
        #: ``nobj - 1, ..., 1, 0``: a fresh slab's freelist, and what a run of consecutive
        #: objects ``a .. a + k - 1`` looks like at a freelist's tail (a slice of this).
        self.descending = list(range(self.nobj - 1, -1, -1))
        #: ``allocated[k]``, ``freed[k]``: k bytes of 1 and of 0, what a run of k objects
        #: writes into a slab's ``used`` (made once per cache, not once per run).
        self.allocated = [b"\x01" * k for k in range(self.nobj + 1)]
        self.freed = [bytes(k) for k in range(self.nobj + 1)]
        #: ``i * size`` in 64-bit lane i, and 1 in every lane, for i < nobj: the integers
        #: kfree_bulk compares pointer arrays with (built by the first bulk free; 0 until then).
        self.lane_offsets = 0
        self.lane_ones = 0
        #: ``kmem_cache_cpu->slab`` per CPU: the slab each CPU allocates from (frozen).
        self.cpu_slab: list[Slab | None] = [None] * nr_cpus
        #: ``kmem_cache_cpu->partial`` per CPU, head last (frozen slabs).
        self.cpu_partial: list[list[Slab]] = [[] for _ in range(nr_cpus)]
        #: Its limit: free objects before 5.16, slabs from 5.16; 0 without
        #: CONFIG_SLUB_CPU_PARTIAL.
        self.cpu_partial_limit = (
            cpu_partial_limit(size, self.nobj, page_size, kernel) if cpu_partial else 0
        )
        self.cpu_partial_objects = kernel < (5, 16)
        #: ``kmem_cache_node->partial``, head first: slabs with free objects no CPU holds.
        self.partial: OrderedDict[Slab, None] = OrderedDict()
        self.min_partial = min_partial(size)
        self.nr_slabs = 0
        #: log2 of a power-of-two size: with one-page slabs, ``ptr & (PAGE_SIZE - 1) >>
        #: size_shift`` is the object index (kfree_bulk's scattered path,
        #: :meth:`SlabAllocator._slab_objects`).
        self.size_shift = size.bit_length() - 1

    def __repr__(self) -> str:
        return f"<KmemCache {self.name} order={self.order} objs={self.nobj}>"


#: :meth:`SlabAllocator._slab_objects`' parse: the cache, each pointer's pfn and object index
#: (array order), and the pfns as little-endian 64-bit lanes.
_Scattered = tuple[KmemCache, "array[int]", Sequence[int], bytes]

#: :meth:`SlabAllocator._scatter_masks_of`: the length and cache they are for, the check mask
#: and what it must read, the pfn mask and the page-offset mask.
_ScatterMasks = tuple[int, KmemCache, int, int, int, int]


def kmalloc_sizes(page_size: int) -> tuple[int, ...]:
    """SLUB's kmalloc size classes: 8..2*PAGE_SIZE powers of two plus 96 and 192."""
    sizes = [8, 16, 32, 64, 96, 128, 192]
    s = 256
    while s <= 2 * page_size:
        sizes.append(s)
        s <<= 1
    return tuple(sizes)


def slab_order(size: int, page_size: int, nr_cpus: int) -> int:
    """``calculate_order()`` simplified: the smallest order holding ``slub_min_objects``.

    ``slub_min_objects = 4 * (fls(nr_cpus) + 1)``, capped by what ``slub_max_order`` can hold;
    so kmalloc-8 uses order 0 and kmalloc-2048 order 3 on a 4-CPU machine, as on real systems.
    """
    min_objects = 4 * (nr_cpus.bit_length() + 1)
    min_objects = min(min_objects, (page_size << SLUB_MAX_ORDER) // size)
    for order in range(SLUB_MAX_ORDER + 1):
        if (page_size << order) // size >= min_objects:
            return order
    return SLUB_MAX_ORDER


def _get_order(size: int, page_size: int) -> int:
    return max(0, ((size - 1) // page_size).bit_length())


class SlabAllocator:
    """The kmalloc caches of one kernel (``kernel.mm.slab``)."""

    def __init__(self, mm: Mm) -> None:
        self.mm = mm
        self.page_size = page_size = mm.page_size
        self.page_shift = mm.page_shift
        config = mm.kernel.config
        nr_cpus = config.nr_cpus
        kernel = config.kernel_version
        self.caches = [
            KmemCache(
                s, slab_order(s, page_size, nr_cpus), page_size, nr_cpus, kernel,
                mm.config.slub_cpu_partial,
            )
            for s in kmalloc_sizes(page_size)
        ]
        self.max_cache_size = self.caches[-1].size
        # size_index[]: 8-byte steps up to 192, then powers of two.
        by8: list[KmemCache] = []
        for i in range(192 // 8):
            need = (i + 1) * 8
            by8.append(next(c for c in self.caches if c.size >= need))
        self._by8 = by8
        self._by_shift = {c.size.bit_length() - 1: c for c in self.caches if c.size >= 256}
        #: Largest kmalloc: one MAX_ORDER-1 block.
        from rcukit.mm.zone import MAX_ORDER

        self.kmalloc_max_size = page_size << (MAX_ORDER - 1)
        #: pfn -> slab, for every page of every slab.
        self._slab_of: dict[int, Slab] = {}
        #: large kmalloc pointer -> order.
        self._large: dict[int, int] = {}
        mmc = mm.config
        self.quarantine: Quarantine | None = (
            Quarantine(mmc.debug_quarantine) if mmc.debug_quarantine else None
        )
        self.alloc_sites: dict[int, RawSite] | None = {} if mmc.debug_alloc_sites else None
        self.nr_objects = 0
        #: 1 in every 64-bit lane of the longest array :meth:`_slab_objects` parsed.
        self._lane_ones = 0
        #: :meth:`_slab_objects`' masks for the last array length and cache it parsed.
        self._scatter_masks: _ScatterMasks | None = None
        self._gfp_plans = mm.page_alloc.plans
        # Read on every kmalloc: the failslab knobs (the object, whose fields debugfs changes)
        # and the frozen cost model's per-object charge.
        self._failslab = mm.failslab
        self._kmalloc_ns = mm.cost.kmalloc_ns

    # -- helpers ---------------------------------------------------------------------------------
    def cache_for(self, size: int) -> KmemCache:
        """``kmalloc_slab()``: the cache a request of ``size`` bytes comes from."""
        if size <= 192:
            return self._by8[(size - 1) >> 3]
        return self._by_shift[(size - 1).bit_length()]

    def _site(self, task: Task | None) -> Site:
        return caller_site(task, self.mm.kernel.now_ns)

    def alloc_site(self, ptr: int) -> Site | None:
        return Site.of(self.alloc_sites.get(ptr)) if self.alloc_sites is not None else None

    def _remember_free(self, ptr: int, site: RawSite, size: int) -> None:
        alloc = self.alloc_sites.pop(ptr, None) if self.alloc_sites is not None else None
        if self.quarantine is not None:
            self.quarantine.put(ptr, site, alloc, size)

    # -- kmalloc ---------------------------------------------------------------------------------
    async def kmalloc(self, task: Task, size: int, gfp: int) -> int:
        """``kmalloc(size, gfp)``: a direct-map pointer, or 0 (NULL) when memory is short.

        ``__GFP_ZERO`` (kzalloc) charges the memset; slab pages are allocated with ``gfp``
        minus ``__GFP_ZERO``, so the page allocator's locking is what the caller's mask implies.
        """
        if size <= 0:
            if size == 0:
                return ZERO_SIZE_PTR
            raise PageAllocError(f"kmalloc size {size} is invalid: must be >= 0")
        mm = self.mm
        if type(gfp) is not int:
            gfp = int(gfp)  # IntFlag arithmetic is ~50x slower than int's on this hot path
        if gfp not in self._gfp_plans:
            # validate_gfp(): bad bits raise GfpError even when no page is needed
            mm.page_alloc.gfp_plan(gfp)
        if size > self.max_cache_size:
            return await self._kmalloc_large(task, size, gfp)
        cache = self._by8[(size - 1) >> 3] if size <= 192 else self.cache_for(size)
        failslab = self._failslab
        if failslab.probability > 0.0 and failslab.should_fail(gfp):
            mm.vmstat.inc("failslab")
            return 0
        slab = cache.cpu_slab[task.cpu.id]
        if slab is None or not slab.freelist:
            slab = await self.kmalloc_refill(task, cache, gfp)
            if slab is None:
                return 0
        idx = slab.freelist.pop()
        slab.used[idx] = 1
        slab.inuse += 1
        self.nr_objects += 1
        ptr = slab.base + idx * cache.size
        task.cpu.local_ns += self._kmalloc_ns  # task.charge(), inline on this per-call path
        if gfp & _ZERO:
            task.charge(mm.cost.zero_page_ns_per_4k * cache.size // 4096)
        if self.alloc_sites is not None:
            self.alloc_sites[ptr] = raw_site(task)
        if mm.tp.kmem_cache_alloc:
            self._trace_kmem_alloc(task, "kmem_cache_alloc", ptr, size, cache.size, gfp)
        return ptr

    # -- runs of consecutive objects (run-based floods, rcukit.rcu.kvfree.runs) -----------------
    def runs_allowed(self, gfp: int) -> bool:
        """Whether :meth:`kmalloc_run` may stand for ``kmalloc(size, gfp)`` calls: nothing
        per-object is watching (tracing, alloc sites, failslab) and ``gfp`` was validated."""
        mm = self.mm
        return (
            not (mm.tp.kmalloc or mm.tp.kmem_cache_alloc)
            and self.alloc_sites is None
            and self._failslab.probability <= 0.0
            and gfp in self._gfp_plans
        )

    def kmalloc_cost(self, cache: KmemCache, gfp: int) -> int:
        """What one :meth:`kmalloc` from ``cache`` charges (``kmalloc_ns``, plus the memset of
        ``__GFP_ZERO``)."""
        if gfp & _ZERO:
            return int(self._kmalloc_ns + self.mm.cost.zero_page_ns_per_4k * cache.size // 4096)
        return int(self._kmalloc_ns)

    def kmalloc_run(self, task: Task, cache: KmemCache, gfp: int, kmax: int) -> tuple[int, int]:
        """Up to ``kmax`` objects of the CPU's cpu slab of ``cache``, as that many
        :meth:`kmalloc` calls would hand them out, if consecutive: ``(first pointer, count)``.

        The caller has checked :meth:`runs_allowed` and that the cpu slab has a free object
        (else :meth:`kmalloc` itself refills it). Each object is charged as ``kmalloc`` would.
        """
        slab = cache.cpu_slab[task.cpu.id]
        assert slab is not None
        a = slab.freelist[-1]
        k = self.take_run(slab, kmax)
        task.cpu.local_ns += k * self.kmalloc_cost(cache, gfp)  # task.charge() of k kmallocs
        return slab.base + a * cache.size, k

    def take_run(self, slab: Slab, kmax: int) -> int:
        """:meth:`kmalloc_run` without the charge: the objects ``a .. a + k - 1`` from the tail
        of ``slab``'s freelist (``a`` its last entry), k at most ``kmax`` and the freelist's
        length; k. The run-based flood calls it directly, its charge folded into its own.

        SLUB hands out a slab's free objects in freelist order; on a fresh slab (and on one a
        ``kfree_bulk()`` refilled segment by segment) that is ascending addresses, so the next
        objects are one arithmetic progression, checked here with C-level list comparisons.
        """
        fl = slab.freelist
        a = fl[-1]
        k = len(fl)
        if kmax < k:
            k = kmax
        if (
            k > 1
            and not slab.fresh
            and (fl[-k] != a + k - 1 or fl[-k:] != slab.cache.descending[-a - k : -a or None])
        ):
            k = _consecutive_tail(fl, k, slab.cache.descending)
        del fl[-k:]
        slab.used[a : a + k] = slab.cache.allocated[k]
        slab.inuse += k
        self.nr_objects += k
        return k

    def slab_index(self, ptr: int) -> tuple[Slab, int] | None:
        """``(slab, object index)`` of a slab object's start address, else None."""
        slab = self._slab_of.get((ptr - self.mm.page_offset) >> self.page_shift)
        if slab is None:
            return None
        idx, rem = divmod(ptr - slab.base, slab.cache.size)
        return (slab, idx) if not rem and idx < slab.nobj else None

    @staticmethod
    def pointers(slab: Slab) -> bytes:
        """Every object pointer of ``slab`` (``base, base + size, ...``) as a native 8-byte
        pointer array's bytes, made once per slab with one big-integer product (not a Python
        integer per object): a block's records take runs of it as slices."""
        data = slab.pointers
        if data is None:
            nobj = slab.nobj
            data = _lanes(slab.cache, slab.base, 0, nobj).to_bytes(8 * nobj, "little")
            if _BIG_ENDIAN:
                swapped = array("Q", data)
                swapped.byteswap()
                data = swapped.tobytes()
            slab.pointers = data
        return data

    async def kmalloc_refill(self, task: Task, cache: KmemCache, gfp: int) -> Slab | None:
        """What :meth:`kmalloc` does first when the CPU's cpu slab is full (or missing):
        ``___slab_alloc()``'s next slab (:func:`~rcukit.mm.slub_partial.get_partial`), or a
        new one; None when no page could be had (kmalloc's NULL)."""
        slab = get_partial(cache, task.cpu.id)
        if slab is not None:
            return slab
        new = await self._new_slab(task, cache, gfp)
        if new is not None:
            new.frozen = True
            cache.cpu_slab[task.cpu.id] = new
        return new

    def kmalloc_refill_nowait(
        self, task: Task, cache: KmemCache, gfp: int, whole_below: int = 0
    ) -> Slab | None:
        """:meth:`kmalloc_refill` when it cannot sleep: a partial slab, or a new order-0 slab
        whose page is a pcp hit (``PageAlloc.alloc_page_nowait``); None, with the cpu slab
        gone, when the refill needs :meth:`kmalloc_refill` itself.

        ``whole_below``: a caller that will allocate every object of a new slab before
        anything else can happen (a run-based flood whose next horizon is a slab or more
        away) passes the CPU time below which, once the page is charged, that holds (its
        tick: see ``KvfreeFlood.kvfree_rcu_flood``). The new slab is then handed out whole:
        every object allocated and counted, the freelist those ``nobj`` kmalloc() calls would
        empty never built, popped or checked for consecutive objects; the caller charges the
        kmallocs.
        """
        slab = get_partial(cache, task.cpu.id)
        if slab is not None or cache.order:
            return slab
        pfn = self.mm.page_alloc.alloc_page_nowait(task, gfp & ~_ZERO)
        if pfn is None:
            return None
        whole = task.cpu.local_ns < whole_below
        new = cache.cpu_slab[task.cpu.id] = self._setup_slab(cache, pfn, 0, whole)
        new.frozen = True
        if whole:
            self.nr_objects += new.nobj
        return new

    async def cpu_hotplug(self, task: Task, cpu_id: int, online: bool) -> None:
        """``slub_cpu_dead()``, the hotplug callback: an offlined CPU's cpu slabs and per-CPU
        partial lists go to the node lists (:func:`~rcukit.mm.slub_partial.flush_cpu_slab`),
        their empty slabs past ``min_partial`` back to the page allocator."""
        if online:
            return
        to_free: list[Slab] = []
        for cache in self.caches:
            flush_cpu_slab(cache, cpu_id, to_free)
        await self._free_slabs(task, to_free)

    async def _new_slab(self, task: Task, cache: KmemCache, gfp: int) -> Slab | None:
        """``allocate_slab()``: the cache's order first (NOWARN|NORETRY), then the minimum."""
        mm = self.mm
        flags = gfp & ~_ZERO
        order = cache.order
        pfn: int | None
        if order:
            pfn = await mm.alloc_pages(task, (flags | _COMP | _NOWARN_NORETRY) & ~_NOFAIL, order)
            if pfn is None:
                order = _get_order(cache.size, self.page_size)
                pfn = await mm.alloc_pages(task, flags | (_COMP if order else 0), order)
        else:
            pfn = await mm.alloc_pages(task, flags, 0)
        if pfn is None:
            return None
        return self._setup_slab(cache, pfn, order)

    def _setup_slab(self, cache: KmemCache, pfn: int, order: int, whole: bool = False) -> Slab:
        """The rest of ``allocate_slab()`` once the pages are there: the slab, PG_slab, and
        the pfn -> slab map. ``whole``: every object allocated (:meth:`kmalloc_refill_nowait`)."""
        mm = self.mm
        nobj = (self.page_size << order) // cache.size
        # page_address(), inline: once per slab page of a flood
        slab = Slab(cache, pfn, order, mm.page_offset + (pfn << self.page_shift), nobj, whole)
        mm.mark_slab(pfn, True)
        if order:
            for i in range(1 << order):
                self._slab_of[pfn + i] = slab
        else:
            self._slab_of[pfn] = slab
        cache.nr_slabs += 1
        vc = mm.vmstat.counts  # vmstat.inc(), inline: once per slab page
        vc["nr_slab_pages"] = vc.get("nr_slab_pages", 0) + (1 << order)
        return slab

    async def _discard_slab(self, task: Task, slab: Slab) -> None:
        """``discard_slab()``: the slab's pages back to the page allocator."""
        mm = self.mm
        self._unlink_slab(slab)
        if slab.order or not mm.page_alloc.free_page_nowait(task, slab.pfn):
            await mm.free_pages(task, slab.pfn, slab.order)

    def _unlink_slab(self, slab: Slab) -> None:
        """``discard_slab()`` before the pages go: the pfn -> slab map, the cache's count,
        PG_slab and ``nr_slab_pages``."""
        mm = self.mm
        slab_of = self._slab_of
        for i in range(1 << slab.order):
            del slab_of[slab.pfn + i]
        slab.cache.nr_slabs -= 1
        mm.mark_slab(slab.pfn, False)
        mm.vmstat.inc("nr_slab_pages", -(1 << slab.order))

    async def _kmalloc_large(self, task: Task, size: int, gfp: int) -> int:
        if size > self.kmalloc_max_size:
            raise PageAllocError(
                f"kmalloc size {size} is too large: at most {self.kmalloc_max_size} bytes "
                "(one MAX_ORDER-1 block); use vmalloc"
            )
        mm = self.mm
        order = _get_order(size, self.page_size)
        pfn = await mm.alloc_pages(task, gfp | _COMP, order)
        if pfn is None:
            return 0
        ptr = mm.page_address(pfn)
        self._large[ptr] = order
        self.nr_objects += 1
        task.charge(mm.cost.kmalloc_ns)
        if self.alloc_sites is not None:
            self.alloc_sites[ptr] = raw_site(task)
        if mm.tp.kmalloc:
            self._trace_kmem_alloc(task, "kmalloc", ptr, size, self.page_size << order, gfp)
        return ptr

    def _trace_kmem_alloc(
        self, task: Task, event: str, ptr: int, bytes_req: int, bytes_alloc: int, gfp: int
    ) -> None:
        """The ``kmem_alloc`` event class of include/trace/events/kmem.h (``kmalloc``,
        ``kmem_cache_alloc``): one line format for every slab allocation event."""
        mm = self.mm
        mm.kernel.trace(
            task,
            event,
            f"call_site={symbol_offset(*raw_site(task)[:2])} ptr={ptr:#x} bytes_req={bytes_req} "
            f"bytes_alloc={bytes_alloc} gfp_flags={mm.gfp_name(gfp)}",
        )

    # -- validation (nothing changes until a pointer is known good) ------------------------------
    def _locate(self, task: Task | None, ptr: int, where: str) -> tuple[Slab | None, int]:
        """``(slab, index)`` of a live object, ``(None, order)`` of a large kmalloc; or raise."""
        mm = self.mm
        if mm.is_vmalloc_addr(ptr):
            area_site = mm.vmap.alloc_site(ptr)
            raise memory_error(
                "invalid-free",
                ptr,
                where=where,
                site=self._site(task),
                alloc_site=area_site,
                detail="a vmalloc address passed to the slab allocator (use vfree or kvfree)",
                show_free=False,
            )
        slab = self._slab_of.get((ptr - mm.page_offset) >> self.page_shift)
        if slab is not None:
            idx, rem = divmod(ptr - slab.base, slab.cache.size)
            if rem or idx >= slab.nobj:
                raise self._not_an_object(
                    "invalid-free",
                    task,
                    ptr,
                    where,
                    f"not the start of a {slab.cache.name} object (offset {rem} into "
                    f"object {idx} of the slab at {slab.base:#x})",
                )
            if slab.used[idx] == 2:
                self._raise_listed_twice(task, ptr, where, "pointer")
            if slab.used[idx] != 1:
                self._raise_not_live(task, ptr, where, slab.cache.name)
            return slab, idx
        order = self._large.get(ptr)
        if order is not None:
            return None, order
        self._raise_not_live(task, ptr, where, "")
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_not_live(self, task: Task | None, ptr: int, where: str, cache: str) -> None:
        entry = self.quarantine.get(ptr) if self.quarantine is not None else None
        if entry is not None:
            raise memory_error(
                "double-free" if where.startswith("kfree") else "use-after-free",
                ptr,
                where=where,
                site=self._site(task),
                alloc_site=entry.alloc_site,
                free_site=entry.free_site,
                detail=f"object of {entry.size} bytes{' in ' + cache if cache else ''}",
            )
        mm = self.mm
        if not mm.is_direct_map_addr(ptr):
            detail = "not an address the allocator ever returned (outside the direct map)"
        elif cache:
            detail = (
                f"a free {cache} object: never allocated, or freed longer ago than the "
                "quarantine remembers"
            )
        else:
            detail = mm.describe_page(ptr)
        raise self._not_an_object("invalid-free", task, ptr, where, detail)

    def _not_an_object(
        self, kind: str, task: Task | None, ptr: int, where: str, detail: str
    ) -> MemoryDebugError:
        """A report on a pointer that names no object: no allocation or free site to show."""
        site = self._site(task)
        return memory_error(
            kind, ptr, where=where, site=site, detail=detail, show_alloc=False, show_free=False
        )

    # -- kfree ------------------------------------------------------------------------------------
    async def kfree(self, task: Task, ptr: int, *, cache_miss: bool = False) -> None:
        """``kfree(ptr)``: one object. ``cache_miss`` adds the DRAM miss of a list walk."""
        if ptr == 0 or ptr == ZERO_SIZE_PTR:
            return
        mm = self.mm
        slab = self._slab_of.get((ptr - mm.page_offset) >> self.page_shift)
        cost = mm.cost
        if slab is not None:
            cache = slab.cache
            idx, rem = divmod(ptr - slab.base, cache.size)
            if rem or idx >= slab.nobj or slab.used[idx] != 1:
                self._locate(task, ptr, "kfree")
            slab.used[idx] = 0
            slab.freelist.append(idx)
            slab.fresh = False
            slab.inuse -= 1
            self.nr_objects -= 1
            task.charge(cost.kfree_ns + cost.cache_miss_ns if cache_miss else cost.kfree_ns)
            if self.quarantine is not None or self.alloc_sites is not None or mm.tp.kfree:
                site = raw_site(task)
                self._remember_free(ptr, site, cache.size)
                if mm.tp.kfree:
                    mm.kernel.trace(
                        task, "kfree", f"call_site={symbol_offset(*site[:2])} ptr={ptr:#x}"
                    )
            if not slab.frozen:
                to_free: list[Slab] = []
                slab_free_list_step(cache, slab, task.cpu.id, to_free)
                if to_free:
                    await self._free_slabs(task, to_free)
            return
        _, order = self._locate(task, ptr, "kfree")
        task.charge(cost.kfree_ns + cost.cache_miss_ns if cache_miss else cost.kfree_ns)
        await self._free_large(task, ptr, order, raw_site(task))

    async def _free_large(self, task: Task, ptr: int, order: int, site: RawSite) -> None:
        mm = self.mm
        del self._large[ptr]
        self.nr_objects -= 1
        self._remember_free(ptr, site, self.page_size << order)
        if mm.tp.kfree:
            mm.kernel.trace(task, "kfree", f"call_site={symbol_offset(*site[:2])} ptr={ptr:#x}")
        await mm.free_pages(task, mm.virt_to_pfn(ptr), order)

    async def kfree_bulk(self, task: Task, ptrs: Sequence[int]) -> None:
        """``kfree_bulk(size, p)``: free ``ptrs`` grouped per slab page (detached freelists).

        Every pointer is checked before anything is freed, so a bad pointer (or one listed
        twice) raises with the allocator unchanged. NULLs are skipped as the kernel does.

        The common case (every pointer a live slab object, listed once) is checked and freed a
        segment of consecutive objects at a time (:meth:`_slab_runs`), or, when the pointers
        are not in order, with per-object steps that are C-level passes over the whole array
        (:meth:`_slab_objects`); anything else, including every error, takes the per-pointer
        path. All leave the same state, charge the same cost and raise the same errors.
        """
        if not len(ptrs):
            return
        step = self.max_cache_size
        head = ptrs[: 2 * _SINGLES_ALLOWED + 1]
        if (
            type(ptrs) is array
            and len(head) > 2 * _SINGLES_ALLOWED
            and not any(0 < b - a <= step for a, b in pairwise(head))
        ):
            # a pointer block with no two neighbours among its first pointers: not run-shaped,
            # so the scattered parse comes first (the segment parse would give up after those)
            objects = self._slab_objects(ptrs)
            if objects is not None:
                if not await self._kfree_bulk_scattered(task, ptrs, objects):
                    await self._kfree_bulk_checked(task, ptrs)
                return
        runs = self._slab_runs(ptrs)
        if runs is not None:
            await self._kfree_bulk_runs(task, ptrs, runs)
            return
        objects = self._slab_objects(ptrs)
        if objects is not None and await self._kfree_bulk_scattered(task, ptrs, objects):
            return
        await self._kfree_bulk_checked(task, ptrs)

    async def kfree_bulk_segments(
        self, task: Task, segs: Sequence[tuple[Slab, int, int]]
    ) -> None:
        """:meth:`kfree_bulk` of the pointers ``segs`` stand for: for each ``(slab, idx0, k)``
        in order, the k consecutive objects of ``slab`` from ``idx0`` (a block filled by
        run-based floods). The segments stand for :meth:`_slab_runs`' parse; they are
        checked the same way (allocated, none listed twice) and anything else goes to
        :meth:`kfree_bulk` (the pointer array made from them), so state, cost and errors are
        the same.

        The usual block (each slab's objects one consecutive stretch, no slab twice, no
        quarantine or alloc-site tracking) is freed here in one pass over flat
        ``(slab, start, stop)`` triples; anything else takes the general parse below.
        """
        if self.quarantine is None and self.alloc_sites is None:
            parsed = _contiguous_stretches(segs)
            if parsed is not None:
                to_free = self._kfree_bulk_stretches(task, *parsed)
                if to_free is None:
                    await self.kfree_bulk(task, segment_pointers(segs))
                elif to_free:
                    await self._free_slabs(task, to_free)
                return
        runs: list[tuple[Slab, int, list[range]]] = []
        nseg: dict[Slab, int] = {}
        prev: Slab | None = None
        for slab, idx0, k in segs:
            if slab.used.count(1, idx0, idx0 + k) != k:
                await self.kfree_bulk(task, segment_pointers(segs))
                return
            seg = range(idx0, idx0 + k)
            if slab is prev:
                run = runs[-1]
                last = run[2][-1]
                if last.stop == idx0:
                    # a run cut at a tick, or the block's first record from the per-call
                    # path: one segment (the free below pushes the same indices either way)
                    run[2][-1] = range(last.start, idx0 + k)
                    runs[-1] = (slab, run[1] + k, run[2])
                    continue
                run[2].append(seg)
                runs[-1] = (slab, run[1] + k, run[2])
            else:
                runs.append((slab, k, [seg]))
                prev = slab
            nseg[slab] = nseg.get(slab, 0) + 1
        if len(nseg) != sum(nseg.values()) and _segments_overlap(runs, nseg):
            await self.kfree_bulk(task, segment_pointers(segs))
            return
        await self._kfree_bulk_runs(task, segs, runs)

    def _kfree_bulk_stretches(
        self,
        task: Task,
        stretches: list[tuple[Slab, int, int]],
        more: dict[Slab, list[range]] | None,
    ) -> list[Slab] | None:
        """:meth:`_kfree_bulk_runs` for :func:`_contiguous_stretches` (every slab once, so
        each slab is its own detached freelist, newest first), after the same checks as
        :meth:`kfree_bulk_segments` (all allocated, no object listed twice; else None and
        nothing changed: the caller hands the block to :meth:`kfree_bulk`). ``more``: every
        stretch of the slabs whose objects came as several (a flood took them from a
        freelist that several bulk frees had refilled), each slab still one detached
        freelist whose stretches are pushed last first.

        Nothing here sleeps, so it is a plain function (one coroutine less per block): it
        returns the emptied slabs the caller gives back to the page allocator
        (:meth:`_free_slabs`)."""
        nr_ptrs = 0
        for slab, start, n in stretches:
            if slab.used.count(1, start, start + n) != n:
                return None
            nr_ptrs += n
        if more is not None:
            for slab, several in more.items():
                used = slab.used
                for r in several[1:]:
                    n = len(r)
                    if used.count(1, r.start, r.stop) != n:
                        return None
                    nr_ptrs += n
                if _ranges_overlap(several):
                    return None
        cost = self.mm.cost
        task.cpu.local_ns += (
            len(stretches) * cost.kfree_bulk_call_ns + nr_ptrs * cost.kfree_bulk_per_object_ns
        )
        to_free: list[Slab] = []
        cpu = task.cpu.id
        for slab, start, n in reversed(stretches):
            cache = slab.cache
            slab.fresh = False
            rs = more.get(slab) if more is not None else None
            if rs is None:
                stop = start + n
                slab.used[start:stop] = cache.freed[n]
                slab.inuse -= n
                # a slab this free discards never has its freelist read again
                if slab.frozen or not slab_free_list_step(cache, slab, cpu, to_free):
                    top = cache.nobj
                    pushed = cache.descending[top - stop : top - start]
                    if slab.freelist:
                        slab.freelist += pushed
                    else:  # a full slab's (the usual): the pushed indices are the freelist
                        slab.freelist = pushed
                continue
            used = slab.used
            for r in rs:
                used[r.start : r.stop] = cache.freed[len(r)]
                slab.inuse -= len(r)
            if slab.frozen or not slab_free_list_step(cache, slab, cpu, to_free):
                top = cache.nobj
                fl = slab.freelist
                for r in reversed(rs):
                    fl += cache.descending[top - r.stop : top - r.start]
        self.nr_objects -= nr_ptrs
        return to_free

    async def _kfree_bulk_runs(
        self,
        task: Task,
        ptrs: Sequence[int] | Sequence[tuple[Slab, int, int]],
        runs: list[tuple[Slab, int, list[range]]],
    ) -> None:
        """Free checked ``runs`` (:meth:`_slab_runs`): detached freelists, cost, release.
        ``ptrs``: the pointers, or the segments they were given as (made into pointers only
        if the quarantine or alloc-site tracking wants them)."""
        mm = self.mm
        slabs = [r[0] for r in runs]
        if len(set(slabs)) == len(slabs):
            # every run its own slab: each round takes one run, newest first (the scan's
            # look-ahead finds no other object of that slab)
            groups = [(slab, [j]) for j, slab in reversed(list(enumerate(slabs)))]
        else:
            groups = _detached_run_groups(slabs, [r[1] for r in runs])
        cost = mm.cost
        nr_ptrs = sum([r[1] for r in runs])
        task.charge(
            len(groups) * cost.kfree_bulk_call_ns + nr_ptrs * cost.kfree_bulk_per_object_ns
        )
        to_free: list[Slab] = []
        cpu = task.cpu.id
        for slab, members in groups:
            used = slab.used
            fl = slab.freelist
            slab.fresh = False
            # a segment's indices, last first: a slice of the cache's descending list
            descending = slab.cache.descending
            top = len(descending)
            nr = 0
            for j in members:
                for seg in reversed(runs[j][2]):
                    used[seg.start : seg.stop] = bytes(len(seg))
                    fl += descending[top - seg.stop : top - seg.start]
                nr += runs[j][1]
            slab.inuse -= nr
            self.nr_objects -= nr
            if not slab.frozen:
                slab_free_list_step(slab.cache, slab, cpu, to_free)
        q = self.quarantine
        if q is not None or self.alloc_sites is not None:
            if ptrs and type(ptrs[0]) is tuple:
                ptrs = segment_pointers(cast("Sequence[tuple[Slab, int, int]]", ptrs))
            freed = cast("Sequence[int]", ptrs)
            site = raw_site(task)
            sites = self.alloc_sites
            allocs = [sites.pop(p, None) for p in freed] if sites is not None else None
            if q is not None:
                sizes: list[int] = []
                for slab, k, _ in runs:
                    sizes += [slab.cache.size] * k
                q.put_many(freed, sizes, site, allocs)
        if to_free:
            await self._free_slabs(task, to_free)

    async def _free_slabs(self, task: Task, slabs: list[Slab]) -> None:
        """``discard_slab()`` of slabs a free took off their lists, in order: the pfn -> slab
        map, the cache's count, PG_slab, ``nr_slab_pages``, and the pages back (a pcp free
        that cannot sleep where it can, without a coroutine per slab)."""
        mm = self.mm
        free_page_nowait = mm.page_alloc.free_page_nowait
        mark_slab = mm.mark_slab
        vc = mm.vmstat.counts
        slab_of = self._slab_of
        for slab in slabs:
            if slab.order:
                await self._discard_slab(task, slab)
                continue
            # _discard_slab() of an order-0 slab, _unlink_slab() inline
            pfn = slab.pfn
            del slab_of[pfn]
            slab.cache.nr_slabs -= 1
            mark_slab(pfn, False)
            vc["nr_slab_pages"] = vc.get("nr_slab_pages", 0) - 1
            if not free_page_nowait(task, pfn):
                await mm.free_pages(task, pfn, 0)

    def _slab_runs(self, ptrs: Sequence[int]) -> list[tuple[Slab, int, list[range]]] | None:
        """``ptrs`` as runs of consecutive same-slab pointers, if every pointer is a live slab
        object listed once (else None): ``(slab, length, segments)``, where each segment is a
        range of object indices the run lists in ascending order.

        Why segments: objects handed out one after another sit at ascending addresses, so a
        block of them is a few arithmetic progressions. One is recognised with a handful of
        C-level big-integer operations on the array's bytes (``base + k * size`` per 8-byte
        lane, compared in one go; the first differing lane ends the segment), instead of
        dividing every pointer in Python. The cost stays proportional to the segment found:
        the next pointer is compared first (a shuffled array makes one-object segments without
        building any integer), then the compared width grows 64-fold (:data:`_PROBE_GROWTH`)
        until a lane differs or the slab ends. The checks are :meth:`_locate`'s: a known slab
        page, an object start inside the slab, allocated, and not listed twice.
        """
        if type(ptrs) is array and ptrs.typecode in "LQ" and ptrs.itemsize == 8:
            arr = ptrs  # a kvfree_rcu block's records, as they are
        else:
            try:
                arr = array("Q", ptrs)
            except (OverflowError, TypeError):
                return None  # not even a pointer: the checked path says what is wrong
        if _BIG_ENDIAN:
            arr = array(arr.typecode, arr)
            arr.byteswap()
        raw = arr.tobytes()
        offset = self.mm.page_offset
        shift = self.page_shift
        slab_of = self._slab_of
        n = len(ptrs)
        runs: list[tuple[Slab, int, list[range]]] = []
        nseg: dict[Slab, int] = {}
        prev: Slab | None = None
        singles = 0
        i = 0
        while i < n:
            p0 = ptrs[i]
            slab = slab_of.get((p0 - offset) >> shift)
            if slab is None:
                return None  # NULL, large kmalloc or not a slab object
            cache = slab.cache
            size = cache.size
            base = slab.base
            idx0, rem = divmod(p0 - base, size)
            if rem or idx0 >= slab.nobj:
                return None
            m = min(n - i, slab.nobj - idx0)
            if m > 1:
                if ptrs[i + 1] - p0 != size:
                    m = 1  # not run-shaped here: no integer built
                    singles += 1
                    if singles > _SINGLES_ALLOWED and 2 * singles > i:
                        return None  # mostly single objects: the per-pointer path is cheaper
                else:
                    w = 2  # lanes 0 and 1 are known to match
                    while w < m:
                        w = min(w * _PROBE_GROWTH, m)
                        diff = int.from_bytes(raw[8 * i : 8 * (i + w)], "little") - _lanes(
                            cache, base, idx0, w
                        )
                        if diff:  # the first lane that differs ends the segment
                            w = ((diff & -diff).bit_length() - 1) >> 6
                            break
                    m = w
            used = slab.used
            if m == 1:
                if used[idx0] != 1:
                    return None
            elif used.count(1, idx0, idx0 + m) != m:
                return None  # a free object in there (or one this call listed already)
            seg = range(idx0, idx0 + m)
            if slab is prev:
                run = runs[-1]
                run[2].append(seg)
                runs[-1] = (slab, run[1] + m, run[2])
            else:
                runs.append((slab, m, [seg]))
                prev = slab
            nseg[slab] = nseg.get(slab, 0) + 1
            i += m
        if len(nseg) != sum(nseg.values()) and _segments_overlap(runs, nseg):
            return None
        return runs

    def _slab_objects(self, ptrs: Sequence[int]) -> _Scattered | None:
        """Each pointer's slab page and object index, if every pointer is in the direct map's
        first window and at an object boundary of the first pointer's cache, a power-of-two
        cache of one-page slabs (else None): the unordered arrays :meth:`_slab_runs` leaves,
        parsed without a Python step per pointer. That each page is a slab of that cache, and
        each object allocated and listed once, is left to :meth:`_kfree_bulk_scattered`, whose
        pass over the pointers looks each slab up (one dict lookup per pointer either way; in
        that pass it is a specialised subscript, not a C-level ``dict.get`` call per pointer
        into a list the pass would read back).

        The array is read as one integer of 64-bit lanes (as :meth:`_slab_runs` does): masking
        every lane at once checks that each pointer is in the direct map's first window (the
        bits above PAGE_OFFSET's lowest set bit are PAGE_OFFSET's) and object-aligned, and gives
        its pfn (the bits in between, above the page offset) and object index (the page offset
        shifted by the size's log2). Returns ``(cache, pfns, indices, keys)``, the first two in
        array order, ``keys`` the pfns as little-endian 64-bit lanes (for :func:`_near_keys`).
        """
        if type(ptrs) is array and ptrs.typecode in "LQ" and ptrs.itemsize == 8:
            arr = ptrs
        else:
            try:
                arr = array("Q", ptrs)
            except (OverflowError, TypeError):
                return None
        n = len(arr)
        offset = self.mm.page_offset
        shift = self.page_shift
        first = self._slab_of.get((arr[0] - offset) >> shift)
        if first is None:
            return None
        cache = first.cache
        size = cache.size
        if cache.order or size & (size - 1) or cache.nobj < 2:
            return None
        if _BIG_ENDIAN:
            arr = array(arr.typecode, arr)
            arr.byteswap()
        whole = int.from_bytes(arr.tobytes(), "little")
        masks = self._scatter_masks
        if masks is None or masks[0] != n or masks[1] is not cache:
            # a drain's blocks are nearly all full: the masks are made once per length
            masks = self._scatter_masks = self._scatter_masks_of(n, cache)
        _, _, check, expect, pfn_mask, idx_mask = masks
        if whole & check != expect:
            return None  # outside the window, or not the start of an object of this size
        keys = ((whole & pfn_mask) >> shift).to_bytes(8 * n, "little")
        lanes = ((whole & idx_mask) >> cache.size_shift).to_bytes(8 * n, "little")
        # below 256 objects an index is its lane's low byte
        idxs = lanes[0::8] if cache.nobj <= 256 else _lanes_array(lanes)
        return cache, _lanes_array(keys), idxs, keys

    def _scatter_masks_of(self, n: int, cache: KmemCache) -> _ScatterMasks:
        """:meth:`_slab_objects`' masks over ``n`` 64-bit lanes of pointers to ``cache``'s
        objects: the bits that must equal PAGE_OFFSET's (above its lowest set bit, the direct
        map's window) together with the object-alignment bits that must be 0, what they must
        read, then the pfn bits and the page-offset bits."""
        ones = self._lane_ones_of(n)
        offset = self.mm.page_offset
        shift = self.page_shift
        window = offset & -offset
        high = ((1 << 64) - window) * ones
        return (
            n,
            cache,
            high | (cache.size - 1) * ones,
            high & offset * ones,
            (window - (1 << shift)) * ones,
            ((1 << shift) - 1) * ones,
        )

    def _lane_ones_of(self, n: int) -> int:
        """1 in each of ``n`` 64-bit lanes (made once for the longest array seen)."""
        ones = self._lane_ones
        if ones.bit_length() < 64 * n - 63:
            ones = self._lane_ones = int.from_bytes(_LANE_ONE * n, "little")
        return ones & ((1 << (64 * n)) - 1)

    async def _kfree_bulk_scattered(
        self, task: Task, ptrs: Sequence[int], objects: _Scattered
    ) -> bool:
        """Free what :meth:`_slab_objects` parsed as the per-pointer path would, or, if a page
        is not a slab of the parsed cache or an object is free or listed twice, undo and return
        False (the caller then takes the per-pointer path, which raises).

        The detached freelists take each slab's objects newest first (a round starts at the
        newest object left and collects older ones of its slab), so every slab's freelist gets
        its objects in reverse array order whatever the grouping: the frees are one pass over
        the array, newest first, which also finds a free object (a repeat finds its first
        listing freed already). A slab joins the partial list at its first group, i.e. in order
        of first appearance newest first. Only the number of groups (the cost) and the order in
        which emptied slabs are discarded depend on the grouping itself.

        The pass keeps no position counter (it is the per-pointer cost of a drain): the few
        slabs that need their pass position (full before it, or emptied by it) and a failure
        read it from what the reversed pfn iterator has left.
        """
        cache, pfns, idxs, keys = objects
        n = len(pfns)
        full = cache.nobj - 1  # what a free leaves in a slab that was full
        slab_of = self._slab_of
        was_full: list[tuple[int, Slab]] = []  # (pass position of its newest object, slab)
        was_fresh: list[Slab] = []
        emptied: list[tuple[int, Slab]] = []  # (pass position of its oldest object, slab)
        newest_first = reversed(pfns)
        freed_all = False
        try:
            for pfn, idx in zip(newest_first, reversed(idxs), strict=True):
                slab = slab_of[pfn]
                if slab.cache is not cache:
                    break
                used = slab.used
                if used[idx] != 1:
                    break
                used[idx] = 0
                slab.freelist.append(idx)
                slab.inuse = inuse = slab.inuse - 1
                if not inuse:
                    emptied.append((n - 1 - length_hint(newest_first), slab))
                elif inuse == full and not slab.frozen:  # nobj > 1: not emptied
                    was_full.append((n - 1 - length_hint(newest_first), slab))
                if slab.fresh:
                    slab.fresh = False
                    was_fresh.append(slab)
            else:
                freed_all = True
        except KeyError:
            pass  # not a slab page (a large kmalloc)
        if not freed_all:
            # the entries before the one that failed, undone
            start = length_hint(newest_first) + 1
            for pfn, idx in zip(pfns[start:], idxs[start:], strict=True):
                slab = slab_of[pfn]
                slab.used[idx] = 1
                slab.freelist.pop()
                slab.inuse += 1
            for slab in was_fresh:
                slab.fresh = True
            return False
        self.nr_objects -= n
        near = _near_keys(keys, pfns, n)
        groups: list[tuple[Slab, list[int]]] = []
        nr_groups = n  # without a near repeat every round is a group of one
        if near:
            # the rounds above the last near repeat are groups of one: the scan runs on the
            # array up to it, and reads only the slabs around the repeats
            top = near[-1] + 1
            singles: list[range] = []
            groups = _build_detached_freelists(
                _PfnSlabs(slab_of, pfns[:top]), [False] * top, [1] * top, near, singles
            )
            nr_groups = len(groups) + sum(map(len, singles)) + n - top
        cost = self.mm.cost
        task.charge(nr_groups * cost.kfree_bulk_call_ns + n * cost.kfree_bulk_per_object_ns)
        q = self.quarantine
        if q is not None or self.alloc_sites is not None:
            site = raw_site(task)
            freed = list(ptrs)
            sites = self.alloc_sites
            allocs = [sites.pop(p, None) for p in freed] if sites is not None else None
            if q is not None:
                q.put_many(freed, [cache.size] * n, site, allocs)
        if was_full or emptied:
            to_free = _scattered_list_steps(cache, task.cpu.id, n, groups, was_full, emptied)
            if to_free:
                await self._free_slabs(task, to_free)
        return True

    async def _kfree_bulk_checked(self, task: Task, ptrs: Sequence[int]) -> None:
        """:meth:`kfree_bulk` a pointer at a time: NULLs, large kmallocs, and every error."""
        n = len(ptrs)
        mm = self.mm
        offset = mm.page_offset
        shift = self.page_shift
        slab_of = self._slab_of
        slabs: list[Slab | None] = [None] * n
        idxs = [0] * n
        marked: list[tuple[Slab, int]] = []
        try:
            for i, ptr in enumerate(ptrs):
                if ptr == 0 or ptr == ZERO_SIZE_PTR:
                    idxs[i] = -1
                    continue
                slab = slab_of.get((ptr - offset) >> shift)
                if slab is not None:
                    idx, rem = divmod(ptr - slab.base, slab.cache.size)
                    if rem or idx >= slab.nobj or slab.used[idx] != 1:
                        self._locate(task, ptr, "kfree_bulk")
                    slab.used[idx] = 2  # claimed by this call: a repeat is a double free
                    marked.append((slab, idx))
                    slabs[i] = slab
                    idxs[i] = idx
                else:
                    if ptr in self._large and any(
                        p == ptr for p, s in zip(ptrs[:i], slabs[:i], strict=True) if s is None
                    ):
                        self._raise_listed_twice(task, ptr, "kfree_bulk", "large kmalloc pointer")
                    _, idxs[i] = self._locate(task, ptr, "kfree_bulk")
        except MemoryDebugError:
            for slab, idx in marked:
                slab.used[idx] = 1
            raise
        groups = _detached_groups(slabs, idxs)
        cost = mm.cost
        live = sum(1 for i in idxs if i >= 0)
        task.charge(len(groups) * cost.kfree_bulk_call_ns + live * cost.kfree_bulk_per_object_ns)
        site = raw_site(task)
        q = self.quarantine
        to_free: list[Slab] = []
        cpu = task.cpu.id
        large: list[tuple[int, int]] = []
        for slab, members in groups:
            if slab is None:
                for i in members:
                    large.append((ptrs[i], idxs[i]))
                continue
            used = slab.used
            fl = slab.freelist
            slab.fresh = False
            for i in members:
                idx = idxs[i]
                used[idx] = 0
                fl.append(idx)
            slab.inuse -= len(members)
            self.nr_objects -= len(members)
            if not slab.frozen:
                slab_free_list_step(slab.cache, slab, cpu, to_free)
        if q is not None or self.alloc_sites is not None:
            freed = [ptrs[i] for i in range(n) if slabs[i] is not None]
            sites = self.alloc_sites
            allocs = [sites.pop(p, None) for p in freed] if sites is not None else None
            if q is not None:
                sizes = [s.cache.size for s in slabs if s is not None]
                q.put_many(freed, sizes, site, allocs)
        await self._free_slabs(task, to_free)
        for ptr, order in large:
            await self._free_large(task, ptr, order, site)

    def _raise_listed_twice(self, task: Task | None, ptr: int, where: str, what: str) -> None:
        """A double free within one ``kfree_bulk()`` array: the object is still live."""
        raise memory_error(
            "double-free",
            ptr,
            where=where,
            site=self._site(task),
            alloc_site=self.alloc_site(ptr),
            detail=f"the same {what} appears twice in one kfree_bulk() array",
            show_free=False,
        )

    # -- queries -------------------------------------------------------------------------------
    def ksize(self, ptr: int) -> int:
        """``ksize()``: the usable size of a live object (its cache size, or whole pages)."""
        if ptr == ZERO_SIZE_PTR:
            return 0
        slab, x = self._locate(None, ptr, "ksize")
        return slab.cache.size if slab is not None else self.page_size << x

    def object_size(self, ptr: int) -> int:
        """The size class of the slab object ``ptr`` points into (or the large kmalloc's size),
        without checking that it is live: a cheap bound for "does this address belong to
        that object" checks on hot paths. 0 if ``ptr`` is not in a slab page."""
        slab = self._slab_of.get((ptr - self.mm.page_offset) >> self.page_shift)
        if slab is not None:
            return int(slab.cache.size)
        order = self._large.get(ptr)
        return self.page_size << order if order is not None else 0

    def is_slab_object(self, ptr: int) -> bool:
        """Whether ``ptr`` lies in a slab page (allocated or not) or is a live large kmalloc."""
        return (
            (ptr - self.mm.page_offset) >> self.page_shift
        ) in self._slab_of or ptr in self._large

    def check_access(self, ptr: int, task: Task | None = None) -> None:
        """KASAN's shadow check for a direct-map pointer: raise on use after free."""
        mm = self.mm
        slab = self._slab_of.get((ptr - mm.page_offset) >> self.page_shift)
        if slab is not None:
            idx = (ptr - slab.base) // slab.cache.size
            if idx >= slab.nobj:
                raise self._not_an_object(
                    "slab-out-of-bounds",
                    task,
                    ptr,
                    "check_access",
                    f"past the last {slab.cache.name} object of the slab at {slab.base:#x}",
                )
            if slab.used[idx] != 1:
                start = slab.base + idx * slab.cache.size
                self._raise_uaf(task, ptr, start, f"{slab.cache.name} object {start:#x}")
            return
        mm.check_page_access(ptr, task)

    def _raise_uaf(self, task: Task | None, ptr: int, start: int, what: str) -> None:
        entry = self.quarantine.get(start) if self.quarantine is not None else None
        raise memory_error(
            "use-after-free",
            ptr,
            where="check_access",
            site=self._site(task),
            alloc_site=entry.alloc_site if entry is not None else None,
            free_site=entry.free_site if entry is not None else None,
            detail=f"inside the freed {what}",
        )

    def freed_entry(self, ptr: int) -> FreedObject | None:
        """The quarantine record of ``ptr`` if it is remembered as freed."""
        return self.quarantine.get(ptr) if self.quarantine is not None else None

    def stats(self) -> dict[str, tuple[int, int]]:
        """``/proc/slabinfo`` in brief: cache name -> (slabs, objects per slab)."""
        return {c.name: (c.nr_slabs, c.nobj) for c in self.caches if c.nr_slabs}


#: A slab page, or None for a large-kmalloc entry (its own group in a detached freelist).
_SlabOrNone = TypeVar("_SlabOrNone", bound="Slab | None")


class _PfnSlabs(Sequence[Slab]):
    """The slabs of one-page slab ``pfns``, each looked up when read: the look-ahead scan of
    a scattered block (:func:`_build_detached_freelists` with its near repeats) reads a few
    entries around each repeat, not the whole array."""

    __slots__ = ("_pfns", "_slab_of")

    def __init__(self, slab_of: dict[int, Slab], pfns: Sequence[int]) -> None:
        self._slab_of = slab_of
        self._pfns = pfns

    def __len__(self) -> int:
        return len(self._pfns)

    @overload
    def __getitem__(self, i: int) -> Slab: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[Slab]: ...
    def __getitem__(self, i: int | slice) -> Slab | Sequence[Slab]:
        if isinstance(i, slice):
            return [self._slab_of[p] for p in self._pfns[i]]
        return self._slab_of[self._pfns[i]]


def _detached_groups(
    slabs: Sequence[Slab | None], idxs: Sequence[int]
) -> list[tuple[Slab | None, list[int]]]:
    """SLUB's ``build_detached_freelist`` loop over an array: indices grouped per slab page.

    Scans backwards; each round starts a group at the last unprocessed object and collects the
    others of the same slab, giving up after 3 misses (look-ahead) and resuming next round from
    the first object it skipped. A large-kmalloc entry (slab None) is a group of its own.
    ``idxs[i] < 0`` marks NULL entries.

    Without NULLs, a round that starts at i with nothing below i taken yet is a group of one
    exactly when none of the 3 entries below i is of the same slab; such stretches (all of a
    shuffled array but a few places) are emitted at once (:func:`_near_repeats`), and the scan
    itself runs only from the places where a neighbour within the look-ahead shares a slab.
    """
    if min(idxs, default=0) < 0:
        return _build_detached_freelists(slabs, [i < 0 for i in idxs], [1] * len(slabs))
    n = len(slabs)
    return _build_detached_freelists(slabs, [False] * n, [1] * n, _near_repeats(slabs))


def _near_repeats(slabs: Sequence[_SlabOrNone]) -> list[int]:
    """The indices i (ascending) whose slab is also that of one of the 3 entries below i."""
    n = len(slabs)
    return sorted(
        {i for d in (1, 2, 3) for i in compress(range(d, n), map(is_, slabs[d:], slabs))}
    )


def _detached_run_groups(
    slabs: Sequence[Slab], lens: Sequence[int]
) -> list[tuple[Slab, list[int]]]:
    """:func:`_detached_groups` over runs: ``slabs[j]`` holds the ``lens[j]`` pointers of run j.

    Runs are never split (a round takes or skips a whole run), so each run counts as
    ``lens[j]`` look-ahead misses; groups list run numbers, newest first, and a run's own
    pointers are taken newest first, exactly as the per-pointer scan takes them.
    """
    return _build_detached_freelists(slabs, [False] * len(slabs), lens)


def _build_detached_freelists(
    slabs: Sequence[_SlabOrNone],
    done: list[bool],
    misses: Sequence[int],
    near: list[int] | None = None,
    singles: list[range] | None = None,
) -> list[tuple[_SlabOrNone, list[int]]]:
    """The scan both callers share: entry i costs ``misses[i]`` look-ahead when skipped.

    The kernel decrements the look-ahead before it records the first skipped index; with a
    cost of 1 the first miss never exhausts the look-ahead, so recording it first (which a
    run costing 3 or more needs) takes the same groups. ``done[i]`` entries are passed over.

    ``near`` (:func:`_near_repeats`) is given only when nothing is done and every miss costs 1:
    a round starting at i, with nothing below i taken yet, is then a group of one unless i is
    in ``near``, so such rounds are emitted a stretch at a time; into ``singles`` as the range
    of their indices (newest first), if it is given, instead of a group each.
    """
    groups: list[tuple[_SlabOrNone, list[int]]] = []
    size = len(slabs)
    lowest_done = size if near is not None else -1  # no entry below this one is taken
    while size:
        size -= 1
        while done[size] and size:
            size -= 1
        if done[size]:
            break
        if size < lowest_done and near is not None:
            while near and near[-1] > size:
                near.pop()
            stop = near[-1] if near else -1
            if singles is None:
                groups += [(slabs[i], [i]) for i in range(size, stop, -1)]
            else:
                singles.append(range(size, stop, -1))
            if stop < 0:
                break
            size = stop
        slab = slabs[size]
        done[size] = True
        if slab is None:
            groups.append((slab, [size]))
            continue
        members = [size]
        lookahead = 3
        first_skipped = 0
        while size:
            size -= 1
            if done[size]:
                continue
            if slabs[size] is slab:
                members.append(size)
                done[size] = True
                lowest_done = min(lowest_done, size)
                continue
            if not first_skipped:
                first_skipped = size + 1
            lookahead -= misses[size]
            if lookahead <= 0:
                break
        groups.append((slab, members))
        size = first_skipped
    return groups


def _scattered_list_steps(
    cache: KmemCache,
    cpu: int,
    n: int,
    groups: list[tuple[Slab, list[int]]],
    was_full: list[tuple[int, Slab]],
    emptied: list[tuple[int, Slab]],
) -> list[Slab]:
    """``__slab_free()``'s list steps of a scattered ``kfree_bulk()`` whose objects were all
    freed at once (:meth:`SlabAllocator._kfree_bulk_scattered`), in the order and with the
    ``inuse`` the detached freelists, one after the other, would have given them; the slabs
    to discard, in order.

    Only two groups of a slab can move it: its first, if the slab was full (frozen onto the
    CPU's partial list, or onto the node list), and its last, if that empties it. Groups start
    at strictly decreasing array indices (each round at the newest object left), so a slab's
    first group starts at its newest object and its last is the one holding its oldest. Until
    its last group an emptied slab still holds objects (for a drain of the CPU's partial list
    in between); a full slab's first group leaves it with ``nobj`` minus that group's size
    (``page->pobjects`` before 5.16). ``was_full`` and ``emptied`` give each slab with its
    pass position (newest first) of its newest and oldest object in the array of ``n``;
    ``groups`` are the scan's groups of more than one round start (none: every round took one
    object).
    """
    size_at = {g[0]: len(g) for _, g in groups}
    first = {s: n - 1 - i for i, s in was_full}
    # (minus the array index where the group starts, 0 = a full slab's first group / 1 =
    # its last, slab): sorted as tuples, newest group first; no two events share both
    # numbers (a group start is one slab's, and a slab whose first group is its last has
    # one event), so slabs are never compared
    events: list[tuple[int, int, Slab]] = [(-at, 0, s) for s, at in first.items()]
    after = {s: s.inuse for s in first}  # its inuse between its first and last group
    if emptied:
        start = {m: g[0] for s, g in groups if s.inuse == 0 for m in g}
        for i, s in emptied:
            oldest = n - 1 - i
            at = start.get(oldest, oldest)
            if first.get(s) != at:
                events.append((-at, 1, s))
                s.inuse = after[s] = 1  # not empty until its last group
    events.sort()
    to_free: list[Slab] = []
    nobj = cache.nobj
    for minus_at, last, slab in events:
        if last:
            slab.inuse = 0
            if not slab.frozen:
                slab_free_list_step(cache, slab, cpu, to_free)
            continue
        slab.inuse = nobj - size_at.get(-minus_at, 1)
        slab_free_list_step(cache, slab, cpu, to_free)
        slab.inuse = after[slab]
    return to_free


def _near_keys(keys: bytes, pfns: Sequence[int], n: int) -> list[int]:
    """What :func:`_near_repeats` gives for ``n`` slab pages ``pfns``, one per pointer of an
    array of one-page slabs (``keys``: the same pfns as 8-byte little-endian lanes), without a
    Python step per pointer.

    Each pfn's low byte is compared, in byte lanes of one integer: byte j of
    ``lanes ^ (lanes >> 8 * d)`` is zero when entries j and j + d may share a page, found with
    a C-level search for a zero byte; only those candidates (a few per block: random pages
    share a low byte once in 256 pairs) compare their whole pfns.
    """
    lanes = int.from_bytes(keys[0::8], "little")
    near: set[int] = set()
    for d in range(1, min(4, n)):  # the look-ahead's 3
        raw = (lanes ^ (lanes >> (8 * d))).to_bytes(n, "little")
        end = n - d
        at = raw.find(0, 0, end)
        while at >= 0:
            if pfns[at] == pfns[at + d]:
                near.add(at + d)
            at = raw.find(0, at + 1, end)
    return sorted(near)


def _lanes_array(lanes: bytes) -> array[int]:
    """Little-endian 64-bit lanes as an array of ints."""
    arr = array(_PTR_TYPECODE, lanes)
    if _BIG_ENDIAN:
        arr.byteswap()
    return arr


def _segments_overlap(
    runs: Sequence[tuple[Slab, int, list[range]]], nseg: dict[Slab, int]
) -> bool:
    """Whether two segments of one slab share an object (a pointer listed twice): one pass over
    the runs collects the segments of each slab that has several, then each such list is
    sorted by start and checked pairwise."""
    several: dict[Slab, list[range]] = {slab: [] for slab, k in nseg.items() if k > 1}
    for slab, _, segs in runs:
        mine = several.get(slab)
        if mine is not None:
            mine += segs
    return any(_ranges_overlap(segs) for segs in several.values())


def _ranges_overlap(segs: list[range]) -> bool:
    """Whether two of ``segs`` (index ranges of one slab) share an index: sorted by start,
    each must end before the next begins (a C-level sort key and a plain loop: a few
    ranges per slab, checked for a block's every slab that came as several stretches)."""
    stop = 0
    for r in sorted(segs, key=_START):
        if r.start < stop:
            return True
        stop = r.stop
    return False


def _contiguous_stretches(
    segs: Sequence[tuple[Slab, int, int]],
) -> tuple[list[tuple[Slab, int, int]], dict[Slab, list[range]] | None] | None:
    """``segs`` merged into ``(slab, first index, count)`` stretches when every slab's
    segments follow one another and no slab comes back later; else None. Such a block is
    :meth:`SlabAllocator._slab_runs`' parse with every run its own slab.

    A slab's segments are usually one consecutive stretch of its objects. When they are not
    (the flood took them from a freelist that several bulk frees had refilled, one stretch per
    free), the slab's entry is its first stretch and the second item maps it to all its
    stretches, in order, as ranges (None when no slab has several)."""
    out: list[tuple[Slab, int, int]] = []
    more: dict[Slab, list[range]] | None = None
    rs: list[range] | None = None  # more[prev], once prev has several stretches
    prev: Slab | None = None
    end = 0
    for seg in segs:
        slab, idx0, k = seg
        if slab is prev:
            if idx0 == end:
                end += k
                if rs is None:
                    _, start, n = out[-1]
                    out[-1] = (slab, start, n + k)
                else:
                    rs[-1] = range(rs[-1].start, end)
                continue
            if rs is None:
                _, start, n = out[-1]
                rs = [range(start, start + n)]
                if more is None:
                    more = {}
                more[slab] = rs
            rs.append(range(idx0, idx0 + k))
            end = idx0 + k
            continue
        out.append(seg)
        prev = slab
        rs = None
        end = idx0 + k
    if len({seg[0] for seg in out}) != len(out):
        return None
    return out, more


#: A range's start, as a sort key that runs in C (:func:`_ranges_overlap`).
_START = attrgetter("start")


#: One-object segments :meth:`SlabAllocator._slab_runs` accepts before it hands an array that
#: is mostly single objects (half of the pointers so far) to the per-pointer path.
_SINGLES_ALLOWED = 8

#: How much wider each probe of :meth:`SlabAllocator._slab_runs` compares than the one before
#: (from the 2 lanes the neighbour check already matched): one probe of 128 lanes covers a whole
#: kmalloc-32 slab, as the in-order case needs (8 cost it ~15% of its drain, measured), and a
#: segment of k objects costs at most max(128, 64 * k) lanes, never the slab's ``nobj`` per pointer.
_PROBE_GROWTH = 64


def _consecutive_tail(fl: list[int], k: int, descending: list[int]) -> int:
    """The longest tail of ``fl``, at most ``k`` long, that pops as consecutive ascending
    indices (``fl[-1], fl[-1] + 1, ...``; a slice of the cache's ``descending``). The caller
    checked that the tail of ``k`` does not.

    Tails are prefix-closed (a longer one qualifies only if every shorter one does), so the
    answer is the m whose tail qualifies while the tail of m + 1 does not. A freelist is
    stretches of consecutive objects (a bulk free pushes one per detached freelist), so the
    one-entry test ``fl[-m] == a + m - 1`` nearly always tells a qualifying length from one
    past the first stretch: with it alone the length doubles until the test fails (most
    stretches at a freelist's tail are short), a binary search between the last two gives a
    candidate, and one slice comparison proves it (its m + 1 failed the one-entry test, or
    is ``k``). Only when that proof fails (an entry that fits the progression by chance,
    after single frees) does the search fall back to whole-tail comparisons, the same way:
    the work follows the answer, not ``k``."""
    a = fl[-1]
    top = len(descending) - a  # descending[top - m : top] == [a + m - 1, ..., a]
    lo = _tail_search(fl, a, k, descending, top, False)
    if lo == 1 or fl[-lo:] == descending[top - lo : top]:
        return lo  # a tail of one always qualifies
    return _tail_search(fl, a, k, descending, top, True)


def _tail_search(
    fl: list[int], a: int, k: int, descending: list[int], top: int, whole: bool
) -> int:
    """:func:`_consecutive_tail`'s search: double, then bisect, on the one-entry test, or
    (``whole``) on the whole-tail comparison too. A tail of 1 qualifies, one of ``k`` not."""
    lo, hi = 1, k
    m = 2
    while m < hi:
        if fl[-m] == a + m - 1 and (not whole or fl[-m:] == descending[top - m : top]):
            lo = m
            m *= 2
        else:
            hi = m
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if fl[-mid] == a + mid - 1 and (not whole or fl[-mid:] == descending[top - mid : top]):
            lo = mid
        else:
            hi = mid
    return lo


def segment_pointers(segs: Sequence[tuple[Slab, int, int]]) -> array[int]:
    """The pointers ``(slab, idx0, k)`` segments list, in order: a pointer array as a block's
    records hold them (slices of each slab's :meth:`SlabAllocator.pointers`)."""
    pointers = SlabAllocator.pointers
    data = b"".join([pointers(slab)[8 * a : 8 * (a + k)] for slab, a, k in segs])
    return array(_PTR_TYPECODE, data)


#: ``array`` typecode of an unsigned 8-byte pointer ("L" where C's long has 8 bytes).
_PTR_TYPECODE = "L" if array("L").itemsize == 8 else "Q"


def _lanes(cache: KmemCache, base: int, idx0: int, m: int) -> int:
    """``base + (idx0 + k) * size`` in 64-bit lane k, for k < m, as one integer.

    Adding lanes never carries: each lane's sum is an address inside the slab, below 2**64.
    So a pointer array equals this integer exactly when it lists those objects in order.
    It is ``(base + idx0 * size)`` times m lanes of 1, plus ``k * size`` in lane k: masking the
    cached integers to m lanes keeps the work proportional to m, not to the slab's ``nobj``.
    """
    offs = cache.lane_offsets
    ones = cache.lane_ones
    if not ones:
        a = array("Q", range(0, cache.nobj * cache.size, cache.size))
        b = array("Q", [1]) * cache.nobj
        if _BIG_ENDIAN:
            a.byteswap()
            b.byteswap()
        offs = cache.lane_offsets = int.from_bytes(a.tobytes(), "little")
        ones = cache.lane_ones = int.from_bytes(b.tobytes(), "little")
    if m < cache.nobj:
        mask = (1 << (64 * m)) - 1
        offs &= mask
        ones &= mask
    return (base + idx0 * cache.size) * ones + offs
