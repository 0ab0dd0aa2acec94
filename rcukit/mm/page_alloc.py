"""The simulated page allocator: ``__alloc_pages`` fast and slow paths, pcp lists, zone lock.

One node with one zone (ZONE_NORMAL) modelled on 5.8/5.9 (kernel.md 3), the allocator the RFC
was written against, plus the RFC's ``__GFP_FAST_TRY`` and v6.15's ``alloc_pages_nolock()``
(kernel.md 2.4). What matters for the debate is *which locks each request takes*, so every lock
the kernel takes on these paths is taken here through the lock checker:

* a pcp hit takes none (``local_irq_save`` only);
* an empty pcp list refills in ``rmqueue_bulk`` under ``zone->lock``, a ``spinlock_t`` (the
  RFC's problem (a) and (b): "Invalid wait context" under ``CONFIG_PROVE_RAW_LOCK_NESTING`` and
  "scheduling while atomic" on PREEMPT_RT when the caller holds a raw lock);
* the slow path's ``wakeup_kswapd()`` takes ``pgdat->kswapd_wait``'s ``spinlock_t``;
* direct reclaim sleeps.

Sharing between simulated CPUs follows :mod:`rcukit.sched.sim`: a CPU's pcp lists are touched
without synchronisation; the zone, its lock and kswapd's wait queue only after ``task.sync()``.
The watermark check reads the zone's free-page count without syncing, as the kernel reads
``NR_FREE_PAGES`` without ``zone->lock`` (its value may be a few operations stale or ahead,
like vmstat drift).

Not modelled: compaction, the OOM killer (a request that would need it fails instead, counted
as ``pgalloc_oom_fail``; ``__GFP_NOFAIL`` raises), deferred struct-page init (so the RFC's
deferred-grow hunk has nothing to skip), ``drain_all_pages``, MIGRATE_HIGHATOMIC reserves, the
5.x boosted-watermark kswapd wake in ``rmqueue()``, and NUMA. Reclaimed pages go straight back
to the buddy lists.

Pages are PFNs (ints). One byte per page (``_pstate``) records whether it is free, allocated
(with its order and the pcp list it came from), a tail of a higher-order block, a slab page, or
held by the "other users" reclaim takes from, so bad frees are caught for a byte per page.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

import attrs

from rcukit.config import CostModel
from rcukit.errors import ConfigError, MemoryDebugError, PageAllocError, SimulationError
from rcukit.locking.locks import Lock, LockKind
from rcukit.mm.background import BackgroundLoad
from rcukit.mm.fault import FaultAttr, caller_site, memory_error
from rcukit.mm.gfp import (
    GFP,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_UNMOVABLE,
    AllocFlags,
    format_gfp,
    gfp_migratetype,
    gfp_to_alloc_flags,
    parse_gfp,
    validate_gfp,
)
from rcukit.mm.kswapd import MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX, Kswapd, Shrinker
from rcukit.mm.kswapd import ShrinkCount as ShrinkCount
from rcukit.mm.kswapd import ShrinkScan as ShrinkScan
from rcukit.mm.slab import SlabAllocator
from rcukit.mm.vmalloc import VMALLOC_END, VMALLOC_START, VmallocAllocator
from rcukit.mm.zone import (
    MAX_ORDER,
    BuddyAllocator,
    PerCpuPages,
    Watermarks,
    compute_watermarks,
    min_free_kbytes_default,
    pcp_high,
    zone_batchsize,
    zone_min_pages,
    zone_watermark_ok,
)
from rcukit.rcu.kvfree.variants import NOLOCK_GFP
from rcukit.sched.sim import Task, WaitQueue

if TYPE_CHECKING:
    from rcukit.kernel import Kernel

#: x86-64 direct map base (``__PAGE_OFFSET_BASE_L4``): ``page_address(pfn) = PAGE_OFFSET + pfn*PS``.
PAGE_OFFSET = 0xFFFF888000000000
#: x86-64 ``vmemmap`` base: ``struct page`` addresses printed by the page tracepoints.
VMEMMAP_START = 0xFFFFEA0000000000
#: ZONE_NORMAL starts at 4 GiB on x86-64 machines with more than 4 GiB.
ZONE_NORMAL_START_PFN = 0x100000
#: Orders above this are "costly" (and never served by ``alloc_pages_nolock``).
PAGE_ALLOC_COSTLY_ORDER = 3
#: ``warn_alloc`` ratelimit (``DEFAULT_RATELIMIT_INTERVAL``/``_BURST``): 10 lines per 5 s.
WARN_RATELIMIT_NS = 5_000_000_000
WARN_RATELIMIT_BURST = 10

# Page state bytes (``_pstate``).
PS_FREE = 0
PS_TAIL = 0x40
PS_SLAB = 0x80
PS_OTHER = 0xFF


def _head_state(mt: int, order: int) -> int:
    return ((mt + 1) << 4) | order


#: state byte -> migratetype for an allocated order-0 non-slab page, else 0xFF.
_ORDER0_MT = bytes((v >> 4) - 1 if v in (0x10, 0x20, 0x30) else 0xFF for v in range(256))

_GFP_HIGHMEM = int(GFP.HIGHMEM)
_ALLOC_WMARK_MASK = int(AllocFlags.WMARK_MASK)
_ALLOC_NO_WATERMARKS = int(AllocFlags.NO_WATERMARKS)
_ALLOC_HIGH = int(AllocFlags.HIGH)
_ALLOC_HARDER = int(AllocFlags.HARDER)
_ALLOC_OOM = int(AllocFlags.OOM)
_ALLOC_TRYLOCK = int(AllocFlags.TRYLOCK)
_ALLOC_KSWAPD = int(AllocFlags.KSWAPD)
_ALLOC_WMARK_LOW = int(AllocFlags.WMARK_LOW)
_ALLOC_WMARK_MIN = int(AllocFlags.WMARK_MIN)


@attrs.define(eq=False)
class Zone:
    """``struct zone`` as far as the model needs it: buddy lists, watermarks, ``zone->lock``."""

    name: str
    buddy: BuddyAllocator
    wmark: Watermarks
    lock: Lock
    managed_pages: int

    @property
    def start_pfn(self) -> int:
        return self.buddy.start_pfn

    @property
    def nr_free(self) -> int:
        """``NR_FREE_PAGES``: pages on the buddy lists (pcp pages do not count, as in 5.x)."""
        return self.buddy.nr_free


class _GfpPlan:
    """Everything the allocator derives from one GFP mask, computed once per mask."""

    __slots__ = (
        "can_reclaim",
        "fast_try",
        "gfp",
        "hit_ns",
        "memalloc",
        "might_sleep",
        "mt",
        "name",
        "nofail",
        "nomemalloc",
        "noretry",
        "nowarn",
        "slow_flags",
        "state0",
        "wakes_kswapd",
        "zero",
    )

    def __init__(self, gfp: int, cost: CostModel, zero_ns: int) -> None:
        g = int(validate_gfp(gfp))
        self.gfp = g
        self.mt = gfp_migratetype(g)
        self.name = format_gfp(g)
        self.fast_try = bool(g & GFP.FAST_TRY)
        self.zero = bool(g & GFP.ZERO)
        self.can_reclaim = bool(g & GFP.DIRECT_RECLAIM)
        self.might_sleep = self.can_reclaim
        self.wakes_kswapd = bool(g & GFP.KSWAPD_RECLAIM)
        self.nowarn = bool(g & GFP.NOWARN)
        self.noretry = bool(g & GFP.NORETRY)
        self.nofail = bool(g & GFP.NOFAIL)
        self.memalloc = bool(g & GFP.MEMALLOC)
        self.nomemalloc = bool(g & GFP.NOMEMALLOC)
        self.slow_flags = int(gfp_to_alloc_flags(g))
        #: Page state byte of an order-0 page from this mask's own pcp list.
        self.state0 = (self.mt + 1) << 4
        #: Simulated cost of a pcp hit (plus zeroing for __GFP_ZERO).
        self.hit_ns = cost.pcp_alloc_ns + (zero_ns if self.zero else 0)


class PageAllocator:
    """``kernel.mm``: the zone, per-CPU pcp lists, kswapd, slab and vmalloc."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        cfg = kernel.config
        mmc = cfg.mm
        self.config = mmc
        self.cost = cfg.cost
        self.locks = kernel.locks
        self.vmstat = kernel.vmstat
        self.tracer = kernel.tracer
        self.page_size = cfg.page_size
        self.page_shift = cfg.page_size.bit_length() - 1
        self.page_offset = PAGE_OFFSET
        self.preempt_rt = cfg.preempt_rt
        #: A ``spinlock_t`` round trip (rt_mutex based on PREEMPT_RT).
        self.spin_lock_cost = cfg.cost.spin_lock_ns + (
            cfg.cost.rt_spin_lock_extra_ns if cfg.preempt_rt else 0
        )
        self.zero_cost = cfg.cost.zero_page_ns(cfg.page_size)

        nr = mmc.zone_pages
        page_kb = cfg.page_size // 1024
        min_kb = (
            mmc.min_free_kbytes
            if mmc.min_free_kbytes is not None
            else min_free_kbytes_default(nr * page_kb)
        )
        wmark = compute_watermarks(
            nr, zone_min_pages(min_kb, nr, page_size=cfg.page_size), mmc.watermark_scale_factor
        )
        buddy = BuddyAllocator(ZONE_NORMAL_START_PFN, nr)
        self.zone = Zone(
            "Normal", buddy, wmark, kernel.new_lock("&zone->lock", LockKind.SPINLOCK), nr
        )
        #: ``zone->lock`` (a ``spinlock_t``), the lock the RFC is about.
        self.zone_lock = self.zone.lock
        self._buddy = buddy
        self._wmark_low = wmark.low
        self._start_pfn = ZONE_NORMAL_START_PFN
        self._end_pfn = ZONE_NORMAL_START_PFN + nr
        self._nr_pages = nr

        batch = mmc.pcp_batch if mmc.pcp_batch is not None else zone_batchsize(nr, cfg.page_size)
        high = mmc.pcp_high if mmc.pcp_high is not None else pcp_high(batch)
        #: Per-CPU ``struct per_cpu_pages``, indexed by CPU id (also in ``cpu.data["pcp"]``).
        self.pcps = [PerCpuPages(high=high, batch=batch) for _ in range(cfg.nr_cpus)]
        for cpu, pcp in zip(kernel.sim.cpus, self.pcps, strict=True):
            cpu.data["pcp"] = pcp

        self._pstate = bytearray(nr)
        self.kswapd = Kswapd(self)
        self._reserve_other_users(nr, mmc.initial_free_pages, mmc.initial_used_fraction)

        self._seed = kernel.rng.getrandbits(64)
        require = int(validate_gfp(parse_gfp(mmc.fail_page_alloc_gfp_filter)))
        #: ``/sys/kernel/debug/fail_page_alloc``.
        self.fail_page_alloc = FaultAttr(
            probability=mmc.fail_page_alloc_probability,
            interval=mmc.fail_page_alloc_interval,
            times=mmc.fail_page_alloc_times,
            require=require,
            min_order=mmc.fail_page_alloc_min_order,
            ignore_gfp_reclaim=mmc.fail_page_alloc_ignore_gfp_reclaim,
            rng=random.Random(f"rcukit-fail_page_alloc:{self._seed}"),
        )
        #: ``/sys/kernel/debug/failslab``.
        self.failslab = FaultAttr(
            probability=mmc.failslab_probability,
            rng=random.Random(f"rcukit-failslab:{self._seed}"),
        )
        self._fault_on = self.fail_page_alloc.enabled

        self._plans: dict[int, _GfpPlan] = {}
        self._nolock_plan = _GfpPlan(NOLOCK_GFP, self.cost, self.zero_cost)
        #: Allocation failures keyed by the failing mask as ``format_gfp`` prints it.
        self.failures_by_gfp: dict[str, int] = {}
        #: ``warn_alloc`` lines (ratelimited like the kernel's), oldest first.
        self.warnings: list[str] = []
        self.warnings_suppressed = 0
        # Blocks free_pages_nolock() could not give back (its zone trylock failed).
        self._parked: list[tuple[int, int, int]] = []
        self._warn_window = -WARN_RATELIMIT_NS
        self._warn_in_window = 0

        self.background: BackgroundLoad | None = None

        self.slab = SlabAllocator(self)
        #: The vmalloc space (``VmallocAllocator``); ``vmalloc`` itself is a method here.
        self.vmap = VmallocAllocator(self)
        # Bound methods re-exported so callers write ``kernel.mm.kfree_bulk(...)``.
        self.kmalloc = self.slab.kmalloc
        self.kfree = self.slab.kfree
        self.kfree_bulk = self.slab.kfree_bulk
        self.ksize = self.slab.ksize
        self.vmalloc = self.vmap.vmalloc
        self.vfree = self.vmap.vfree
        self.vfree_bulk = self.vmap.vfree_bulk

    def _reserve_other_users(self, nr: int, free_pages: int | None, used_fraction: float) -> None:
        """Hand the boot-time share of the zone to "other users" (what reclaim takes back)."""
        if free_pages is None:
            used = int(nr * used_fraction)
        else:
            if free_pages > nr:
                raise ConfigError(
                    f"mm.initial_free_pages = {free_pages} exceeds mm.zone_pages = {nr}"
                )
            used = nr - free_pages
        st = self._pstate
        base = self._start_pfn
        pool = self.kswapd.pool
        for pfn, order in self.zone.buddy.reserve(used, MIGRATE_MOVABLE):
            i = pfn - base
            st[i : i + (1 << order)] = b"\xff" * (1 << order)
            pool.add(pfn, order)

    def start(self) -> None:
        """Boot: spawn kswapd0 on the last CPU and, if configured, the background load."""
        sim = self.kernel.sim
        last = len(sim.cpus) - 1
        self.kswapd.task = sim.spawn(self.kswapd.main, last, "kswapd0", workload=False)
        if self.config.background_allocs_per_ms > 0:
            self.background = BackgroundLoad(self, self._seed)
            self.background.start()

    # -- addresses -----------------------------------------------------------------------------
    def page_address(self, pfn: int) -> int:
        """``page_address()``: the direct-map address of a PFN."""
        return PAGE_OFFSET + (pfn << self.page_shift)

    def virt_to_pfn(self, addr: int) -> int:
        """``virt_to_pfn()`` for a direct-map address (any byte inside the page)."""
        if not self.is_direct_map_addr(addr):
            raise PageAllocError(
                f"{addr:#x} is not a direct-map address of this zone "
                f"[{self.page_address(self._start_pfn):#x}, {self.page_address(self._end_pfn):#x})"
            )
        return (addr - PAGE_OFFSET) >> self.page_shift

    def is_direct_map_addr(self, addr: int) -> bool:
        return self._start_pfn <= (addr - PAGE_OFFSET) >> self.page_shift < self._end_pfn and (
            addr >= PAGE_OFFSET
        )

    @staticmethod
    def is_vmalloc_addr(addr: int) -> bool:
        return VMALLOC_START <= addr < VMALLOC_END

    @staticmethod
    def page_struct(pfn: int) -> int:
        """``pfn_to_page()``: the ``struct page`` address (vmemmap, 64 bytes per page)."""
        return VMEMMAP_START + pfn * 64

    # -- small shared helpers ---------------------------------------------------------------------
    def gfp_name(self, gfp: int) -> str:
        plan = self._plans.get(gfp)
        return plan.name if plan is not None else format_gfp(gfp)

    def count_zone_lock(self) -> None:
        self.vmstat.inc("zone_lock_acquisitions")

    def nr_free_pages(self) -> int:
        """``nr_free_pages()``: free pages on the buddy lists (the watermark gauge)."""
        return self.zone.buddy.nr_free

    def pcp(self, cpu: int) -> PerCpuPages:
        return self.pcps[cpu]

    def _plan(self, gfp: int) -> _GfpPlan:
        plan = _GfpPlan(gfp, self.cost, self.zero_cost)
        if len(self._plans) < 4096:
            self._plans[int(gfp)] = plan
        return plan

    # -- shrinkers -------------------------------------------------------------------------------
    def register_shrinker(self, name: str, count: ShrinkCount, scan: ShrinkScan) -> Shrinker:
        """Reclaim (kswapd and direct) will call ``count(task)`` and ``await scan(task, n)``."""
        return self.kswapd.register_shrinker(name, count, scan)

    def unregister_shrinker(self, shrinker: Shrinker) -> None:
        self.kswapd.unregister_shrinker(shrinker)

    @property
    def kswapd_wait(self) -> WaitQueue:
        """``pgdat->kswapd_wait``."""
        return self.kswapd.wait

    # -- allocation: the hot path ------------------------------------------------------------------
    async def alloc_pages(self, task: Task, gfp: int, order: int = 0) -> int | None:
        """``alloc_pages(gfp, order)``: a PFN, or None.

        Order 0 with free memory above the low watermark and a page on this CPU's pcp list is
        the fast path: no lock, no sync. Everything else goes through :meth:`_alloc_slow`.
        """
        plan = self._plans.get(gfp)
        if plan is None:
            plan = self._plan(gfp)
        if order and not 0 < order < MAX_ORDER:
            raise PageAllocError(f"order {order} is invalid: allowed 0..{MAX_ORDER - 1}")
        if plan.might_sleep:
            self.locks.might_sleep(task, "__alloc_pages_nodemask")
        if self._fault_on and self.fail_page_alloc.should_fail(plan.gfp, order):
            self._injected_failure(task, plan, order)
            return None
        if order == 0 and self._buddy.nr_free > self._wmark_low:
            pcp = self.pcps[task.cpu.id]
            lst = pcp.lists[plan.mt]
            if lst:
                pfn = lst.popleft()
                pcp.count -= 1
                self._pstate[pfn - self._start_pfn] = plan.state0
                task.charge(plan.hit_ns)
                self.vmstat.inc("pgalloc_normal")
                if self.tracer.on:
                    self._trace_alloc(task, pfn, 0, plan.mt, plan)
                return pfn
        return await self._alloc_slow(task, plan, order)

    def _prep_new_page(self, task: Task, pfn: int, order: int, plan: _GfpPlan, mt: int) -> int:
        """``prep_new_page`` + accounting + ``mm_page_alloc``."""
        i = pfn - self._start_pfn
        st = self._pstate
        st[i] = ((mt + 1) << 4) | order
        if order:
            st[i + 1 : i + (1 << order)] = b"\x40" * ((1 << order) - 1)
        if plan.zero:
            task.charge(self.zero_cost << order)
        self.vmstat.inc("pgalloc_normal", 1 << order)
        if self.tracer.on:
            self._trace_alloc(task, pfn, order, mt, plan)
        return pfn

    def _trace_alloc(self, task: Task, pfn: int, order: int, mt: int, plan: _GfpPlan) -> None:
        self.kernel.trace(
            task,
            "mm_page_alloc",
            f"page={self.page_struct(pfn):016x} pfn=0x{pfn:x} order={order} "
            f"migratetype={mt} gfp_flags={plan.name}",
        )

    # -- allocation: the rest of __alloc_pages_nodemask --------------------------------------------
    async def _alloc_slow(self, task: Task, plan: _GfpPlan, order: int) -> int | None:
        first = _ALLOC_WMARK_LOW | (_ALLOC_KSWAPD if plan.wakes_kswapd else 0)
        pfn = await self._get_page_from_freelist(task, plan, order, first)
        if pfn is not None:
            return pfn
        if plan.fast_try:
            # The RFC: "Bypass slow path if __GFP_FAST_TRY" (goto out: no warn_alloc either).
            self._count_failure(plan)
            return None
        return await self._slowpath(task, plan, order)

    async def _slowpath(self, task: Task, plan: _GfpPlan, order: int) -> int | None:
        """``__alloc_pages_slowpath`` of 5.8 (kernel.md 3.4), minus compaction and OOM."""
        alloc_flags = plan.slow_flags
        kswapd = self.kswapd
        if alloc_flags & _ALLOC_KSWAPD:
            await kswapd.wakeup(task, plan.gfp, order)
        pfn = await self._get_page_from_freelist(task, plan, order, alloc_flags)
        if pfn is not None:
            return pfn
        no_progress = 0
        loops = 0
        while True:
            loops += 1
            if alloc_flags & _ALLOC_KSWAPD:
                await kswapd.wakeup(task, plan.gfp, order)
            flags = alloc_flags
            if self._pfmemalloc_allowed(task, plan):
                flags = _ALLOC_NO_WATERMARKS
            pfn = await self._get_page_from_freelist(task, plan, order, flags)
            if pfn is not None:
                return pfn
            if not plan.can_reclaim or task.data.get("PF_MEMALLOC"):
                break
            progress = await self._direct_reclaim(task, plan, order)
            pfn = await self._get_page_from_freelist(task, plan, order, flags)
            if pfn is not None:
                return pfn
            if plan.noretry:
                break
            no_progress = 0 if progress else no_progress + 1
            # should_reclaim_retry(); the OOM killer is not modelled, so give up instead.
            if no_progress > MAX_RECLAIM_RETRIES or loops > 4 * MAX_RECLAIM_RETRIES:
                self.vmstat.inc("pgalloc_oom_fail")
                break
        # 5.8: NOFAIL without direct reclaim only WARNs and fails; with it, the kernel loops
        # (OOM-killing) until it succeeds, which this model cannot do.
        if plan.nofail and plan.can_reclaim:
            raise SimulationError(
                f"{task.comm}: __GFP_NOFAIL order-{order} allocation ({plan.name}) cannot be "
                "satisfied: reclaim made no progress and the OOM killer is not modelled"
            )
        self._nopage(task, plan, order)
        return None

    def _pfmemalloc_allowed(self, task: Task, plan: _GfpPlan) -> bool:
        """``__gfp_pfmemalloc_flags``: MEMALLOC, or a PF_MEMALLOC task outside interrupts."""
        if plan.nomemalloc:
            return False
        if plan.memalloc:
            return True
        return bool(task.data.get("PF_MEMALLOC")) and not (task.in_hardirq or task.in_softirq)

    async def _direct_reclaim(self, task: Task, plan: _GfpPlan, order: int) -> int:
        """``__alloc_pages_direct_reclaim``: a real sleep (schedule point), then 32 pages back."""
        self.locks.schedule(task, "__perform_reclaim")
        self.vmstat.inc("allocstall_normal")
        if self.tracer.on:
            self.kernel.trace(
                task, "mm_vmscan_direct_reclaim_begin", f"order={order} gfp_flags={plan.name}"
            )
        await task.sleep_ns(self.cost.direct_reclaim_ns)
        n = await self.kswapd.shrink_node(task, SWAP_CLUSTER_MAX, charge_scan=False)
        self.vmstat.inc("pgsteal_direct", n)
        return n

    async def _get_page_from_freelist(
        self, task: Task, plan: _GfpPlan, order: int, alloc_flags: int
    ) -> int | None:
        zone = self.zone
        if not alloc_flags & _ALLOC_NO_WATERMARKS:
            wm = zone.wmark
            idx = alloc_flags & _ALLOC_WMARK_MASK
            mark = wm.min if idx == 0 else (wm.low if idx == 1 else wm.high)
            free = zone.buddy.nr_free
            # zone_watermark_fast(): order 0 above the mark needs no reserve arithmetic.
            if not (order == 0 and free > mark) and not zone_watermark_ok(
                free,
                order,
                mark,
                bool(alloc_flags & _ALLOC_HIGH),
                bool(alloc_flags & _ALLOC_HARDER),
                bool(alloc_flags & _ALLOC_OOM),
                0,
                zone.buddy.has_free_block(order) if order else True,
            ):
                return None
        return await self._rmqueue(task, plan, order, alloc_flags)

    async def _rmqueue(
        self, task: Task, plan: _GfpPlan, order: int, alloc_flags: int
    ) -> int | None:
        trylock = bool(alloc_flags & _ALLOC_TRYLOCK)
        if order == 0:
            pcp = self.pcps[task.cpu.id]
            lists = pcp.lists
            if plan.fast_try:
                # The RFC's loop: lists[mt .. MIGRATE_PCPTYPES-1], never rmqueue_bulk.
                for mt in range(plan.mt, MIGRATE_PCPTYPES):
                    if lists[mt]:
                        pfn = lists[mt].popleft()
                        pcp.count -= 1
                        task.charge(self.cost.pcp_alloc_ns)
                        return self._prep_new_page(task, pfn, 0, plan, mt)
                return None
            mt = plan.mt
            if not lists[mt] and not await self._rmqueue_bulk(task, pcp, mt, trylock):
                return None
            pfn = lists[mt].popleft()
            pcp.count -= 1
            task.charge(self.cost.pcp_alloc_ns)
            return self._prep_new_page(task, pfn, 0, plan, mt)
        # 5.8 rmqueue(): order > 0 takes zone->lock directly (spin_lock_irqsave).
        if trylock and order > PAGE_ALLOC_COSTLY_ORDER:
            return None
        await task.sync()
        lock = self.zone.lock
        if trylock:
            if not self.locks.trylock(task, lock, "rmqueue", irqsave=True):
                self.vmstat.inc("zone_lock_trylock_fail")
                return None
        else:
            self.locks.acquire(task, lock, "rmqueue", irqsave=True)
        self.count_zone_lock()
        mt = plan.mt
        block = self.zone.buddy.rmqueue(order, mt)
        task.charge(self.spin_lock_cost + self.cost.buddy_page_ns)
        self.locks.release(task, lock)
        if block is None:
            return None
        pfn = block
        if self.tracer.on:
            self.kernel.trace(
                task,
                "mm_page_alloc_zone_locked",
                f"page={self.page_struct(pfn):016x} pfn=0x{pfn:x} order={order} "
                f"migratetype={mt} percpu_refill=0",
            )
        task.charge(self.cost.pcp_alloc_ns)
        return self._prep_new_page(task, pfn, order, plan, mt)

    async def _rmqueue_bulk(self, task: Task, pcp: PerCpuPages, mt: int, trylock: bool) -> int:
        """``rmqueue_bulk``: ``batch`` pages from the buddy lists under ``zone->lock``."""
        await task.sync()
        lock = self.zone.lock
        if trylock:
            if not self.locks.trylock(task, lock, "rmqueue_bulk", irqsave=True):
                self.vmstat.inc("zone_lock_trylock_fail")
                return 0
        else:
            self.locks.acquire(task, lock, "rmqueue_bulk", irqsave=True)
        self.count_zone_lock()
        pages = self.zone.buddy.rmqueue_bulk(pcp.batch, mt)
        n = len(pages)
        task.charge(self.spin_lock_cost + n * self.cost.buddy_page_ns)
        self.locks.release(task, lock)
        self.vmstat.inc("pcp_refill")
        if n:
            pcp.lists[mt].extend(pages)
            pcp.count += n
            if self.tracer.on:
                for pfn in pages:
                    self.kernel.trace(
                        task,
                        "mm_page_alloc_zone_locked",
                        f"page={self.page_struct(pfn):016x} pfn=0x{pfn:x} order=0 "
                        f"migratetype={mt} percpu_refill=1",
                    )
        return n

    # -- alloc_pages_nolock ----------------------------------------------------------------------
    async def alloc_pages_nolock(self, task: Task, order: int = 0) -> int | None:
        """``alloc_pages_nolock()`` (v6.15 ``try_alloc_pages``, renamed in v6.16), kernel.md 2.4.

        ``__GFP_NOWARN|__GFP_ZERO|__GFP_NOMEMALLOC``; pcp first, a *trylock* of ``zone->lock``
        for the refill; min watermark; no slow path, no kswapd, no reclaim, no fault
        injection; None at once on PREEMPT_RT in hard IRQ and for costly orders. Never splats.
        """
        plan = self._nolock_plan
        if (self.preempt_rt and task.in_hardirq) or not 0 <= order <= PAGE_ALLOC_COSTLY_ORDER:
            if not 0 <= order < MAX_ORDER:
                raise PageAllocError(f"order {order} is invalid: allowed 0..{MAX_ORDER - 1}")
            self._count_failure(plan)
            self.vmstat.inc("pgalloc_fail_nolock")
            return None
        pfn = await self._get_page_from_freelist(
            task, plan, order, _ALLOC_WMARK_MIN | _ALLOC_TRYLOCK
        )
        if pfn is None:
            self._count_failure(plan)
            self.vmstat.inc("pgalloc_fail_nolock")
        return pfn

    # -- failures -------------------------------------------------------------------------------
    def _count_failure(self, plan: _GfpPlan) -> None:
        self.vmstat.inc("pgalloc_fail")
        d = self.failures_by_gfp
        d[plan.name] = d.get(plan.name, 0) + 1

    def _injected_failure(self, task: Task, plan: _GfpPlan, order: int) -> None:
        self.vmstat.inc("fail_page_alloc")
        self._count_failure(plan)
        if self.tracer.on:
            self.kernel.trace(
                task, "fail_page_alloc", f"order={order} gfp_flags={plan.name} injected=1"
            )

    def _nopage(self, task: Task, plan: _GfpPlan, order: int) -> None:
        self._count_failure(plan)
        if not plan.nowarn:
            g = plan.gfp
            mode = f"{g:#x}" if g else "0"
            self.warn(
                task,
                f"{task.comm}: page allocation failure: order:{order}, mode:{mode}"
                f"({plan.name}), nodemask=(null)",
            )

    def warn(self, task: Task, line: str) -> None:
        """A ``warn_alloc``-style line, ratelimited to 10 per 5 simulated seconds."""
        now = task.now_ns
        if now - self._warn_window >= WARN_RATELIMIT_NS:
            self._warn_window = now
            self._warn_in_window = 0
        if self._warn_in_window >= WARN_RATELIMIT_BURST:
            self.warnings_suppressed += 1
            return
        self._warn_in_window += 1
        if len(self.warnings) < 10_000:
            self.warnings.append(line)
        self.vmstat.inc("warn_alloc")
        if self.tracer.on:
            self.kernel.trace(task, "warn_alloc", line)
        if self.kernel.config.print_splats:
            print(line, file=sys.stderr)

    # -- freeing ----------------------------------------------------------------------------------
    async def free_pages(self, task: Task, pfn: int, order: int = 0) -> None:
        """``__free_pages``: order 0 to this CPU's pcp list (drain ``batch`` at ``high``)."""
        i = pfn - self._start_pfn
        if order == 0 and 0 <= i < self._nr_pages:
            st = self._pstate
            mt = _ORDER0_MT[st[i]]
            if mt < 3:  # MIGRATE_PCPTYPES
                st[i] = PS_FREE
                pcp = self.pcps[task.cpu.id]
                pcp.lists[mt].appendleft(pfn)
                pcp.count += 1
                task.charge(self.cost.pcp_free_ns)
                self.vmstat.inc("pgfree")
                if self.tracer.on:
                    self._trace_free(task, pfn, 0)
                if pcp.count >= pcp.high:
                    await self._free_pcppages_bulk(task, pcp, pcp.batch, False)
                return
        await self._free_pages_slow(task, pfn, order)

    async def free_pages_nolock(self, task: Task, pfn: int, order: int = 0) -> None:
        """``free_pages_nolock()`` (v6.15): like :meth:`free_pages` with trylocks only.

        When the pcp list is over ``high`` and ``zone->lock`` is busy, the drain is skipped
        and the pages stay on the pcp list; higher orders whose trylock fails are parked and
        freed by the next locked free (the kernel's per-zone llist, ``FPI_TRYLOCK``).
        """
        mt = self._check_free(task, pfn, order)
        if order == 0:
            self._pstate[pfn - self._start_pfn] = PS_FREE
            pcp = self.pcps[task.cpu.id]
            pcp.lists[mt].appendleft(pfn)
            pcp.count += 1
            task.charge(self.cost.pcp_free_ns)
            self.vmstat.inc("pgfree")
            if self.tracer.on:
                self._trace_free(task, pfn, 0)
            if pcp.count >= pcp.high:
                await self._free_pcppages_bulk(task, pcp, pcp.batch, True)
            return
        await self._free_one_page(task, pfn, order, mt, trylock=True)

    def _trace_free(self, task: Task, pfn: int, order: int) -> None:
        self.kernel.trace(
            task,
            "mm_page_free",
            f"page={self.page_struct(pfn):016x} pfn=0x{pfn:x} order={order}",
        )

    def _check_free(self, task: Task, pfn: int, order: int) -> int:
        """Validate a page free; returns the block's migratetype or raises MemoryDebugError."""
        if not 0 <= order < MAX_ORDER:
            raise PageAllocError(f"order {order} is invalid: allowed 0..{MAX_ORDER - 1}")
        i = pfn - self._start_pfn
        where = f"__free_pages(pfn=0x{pfn:x}, order={order}) from {task.comm}/{task.pid}"
        if not 0 <= i < len(self._pstate):
            raise MemoryDebugError(
                f"BUG: Bad page state: {where}: pfn is outside the zone "
                f"[0x{self._start_pfn:x}, 0x{self._end_pfn:x})"
            )
        v = self._pstate[i]
        if v == PS_FREE:
            raise MemoryDebugError(f"BUG: Bad page state: {where}: double free, the page is free")
        if v == PS_OTHER:
            raise MemoryDebugError(
                f"BUG: Bad page state: {where}: the page belongs to other kernel users "
                "(the allocator never returned it)"
            )
        if v == PS_TAIL:
            raise MemoryDebugError(
                f"BUG: Bad page state: {where}: a tail page of a higher-order block "
                "(free the block's first page with its order)"
            )
        if v & PS_SLAB:
            raise MemoryDebugError(
                f"BUG: Bad page state: {where}: the page belongs to a slab (use kfree)"
            )
        mt, got = (v >> 4) - 1, v & 0x0F
        if got != order:
            raise MemoryDebugError(
                f"BUG: Bad page state: {where}: the block was allocated with order {got}"
            )
        return mt

    async def _free_pages_slow(self, task: Task, pfn: int, order: int) -> None:
        mt = self._check_free(task, pfn, order)
        if order == 0:  # pragma: no cover - order 0 always takes the fast path
            raise AssertionError("order-0 free reached the slow path")
        await self._free_one_page(task, pfn, order, mt, trylock=False)

    async def _free_one_page(
        self, task: Task, pfn: int, order: int, mt: int, *, trylock: bool
    ) -> None:
        """``free_one_page``: a higher-order block straight back to the buddy lists."""
        i = pfn - self._start_pfn
        self._pstate[i : i + (1 << order)] = bytes(1 << order)
        self.vmstat.inc("pgfree", 1 << order)
        if self.tracer.on:
            self._trace_free(task, pfn, order)
        await task.sync()
        lock = self.zone.lock
        if trylock:
            if not self.locks.trylock(task, lock, "free_one_page", irqsave=True):
                self.vmstat.inc("zone_lock_trylock_fail")
                # Parked: the next holder of zone->lock frees it (zone llist).
                self._parked.append((pfn, order, mt))
                return
        else:
            self.locks.acquire(task, lock, "free_one_page", irqsave=True)
        self.count_zone_lock()
        buddy = self.zone.buddy
        for p, o, m in self._drain_parked():
            buddy.free(p, o, m)
        buddy.free(pfn, order, mt)
        task.charge(self.spin_lock_cost + self.cost.buddy_free_page_ns)
        self.locks.release(task, lock)

    def _drain_parked(self) -> list[tuple[int, int, int]]:
        parked = self._parked
        if not parked:
            return parked
        self._parked = []
        return parked

    async def _free_pcppages_bulk(
        self, task: Task, pcp: PerCpuPages, count: int, trylock: bool
    ) -> int:
        """``free_pcppages_bulk``: ``count`` pages from the pcp lists back under ``zone->lock``."""
        await task.sync()
        lock = self.zone.lock
        if trylock:
            if not self.locks.trylock(task, lock, "free_pcppages_bulk", irqsave=True):
                self.vmstat.inc("zone_lock_trylock_fail")
                return 0
        else:
            self.locks.acquire(task, lock, "free_pcppages_bulk", irqsave=True)
        self.count_zone_lock()
        pages = pcp.take_for_drain(count)
        buddy = self.zone.buddy
        for p, o, m in self._drain_parked():
            buddy.free(p, o, m)
        buddy.free_bulk(pages)
        task.charge(self.spin_lock_cost + len(pages) * self.cost.buddy_free_page_ns)
        self.locks.release(task, lock)
        self.vmstat.inc("pcp_drain")
        return len(pages)

    async def drain_local_pages(self, task: Task) -> int:
        """``drain_local_pages``: every page of this CPU's pcp lists back to the buddy lists."""
        pcp = self.pcps[task.cpu.id]
        if not pcp.count:
            return 0
        return await self._free_pcppages_bulk(task, pcp, pcp.count, False)

    # -- convenience ------------------------------------------------------------------------------
    async def get_free_page(self, task: Task, gfp: int) -> int | None:
        """``__get_free_page(gfp)``: a direct-map address, or None."""
        pfn = await self.alloc_pages(task, gfp & ~_GFP_HIGHMEM, 0)
        return None if pfn is None else PAGE_OFFSET + (pfn << self.page_shift)

    async def free_page(self, task: Task, addr: int) -> None:
        """``free_page(addr)`` for an address from :meth:`get_free_page` (or a block source)."""
        if addr & (self.page_size - 1):
            raise MemoryDebugError(
                f"BUG: Bad page state: free_page({addr:#x}) from {task.comm}/{task.pid}: "
                "not the start of a page"
            )
        await self.free_pages(task, self.virt_to_pfn(addr), 0)

    async def kvfree(self, task: Task, ptr: int) -> None:
        """``kvfree(ptr)``: vfree for vmalloc addresses, kfree otherwise."""
        if VMALLOC_START <= ptr < VMALLOC_END:
            await self.vmap.vfree(task, ptr)
        else:
            await self.slab.kfree(task, ptr)

    def alloc_pages_early(self, order: int = 0, mt: int = MIGRATE_UNMOVABLE) -> int | None:
        """A boot-time (memblock-like) allocation: no task, no cost, no locks, no watermarks.

        For reserves set up before the simulation runs, such as a mempool's pages. Do not call
        it from a running task: it touches the zone without synchronising.
        """
        pfn = self.zone.buddy.rmqueue(order, mt)
        if pfn is None:
            return None
        i = pfn - self._start_pfn
        self._pstate[i] = _head_state(mt, order)
        if order:
            self._pstate[i + 1 : i + (1 << order)] = b"\x40" * ((1 << order) - 1)
        self.vmstat.inc("pgalloc_normal", 1 << order)
        return pfn

    # -- debug hooks for slab and vmalloc ---------------------------------------------------
    def mark_slab(self, pfn: int, on: bool) -> None:
        i = pfn - self._start_pfn
        if on:
            self._pstate[i] |= PS_SLAB
        else:
            self._pstate[i] &= ~PS_SLAB & 0xFF

    def page_state(self, pfn: int) -> str:
        """One word for a page's state: free, allocated, tail, slab, other-users, outside."""
        i = pfn - self._start_pfn
        if not 0 <= i < len(self._pstate):
            return "outside"
        v = self._pstate[i]
        if v == PS_FREE:
            return "free"
        if v == PS_OTHER:
            return "other-users"
        if v == PS_TAIL:
            return "tail"
        return "slab" if v & PS_SLAB else "allocated"

    def describe_page(self, addr: int) -> str:
        pfn = (addr - PAGE_OFFSET) >> self.page_shift
        state = self.page_state(pfn)
        if state == "allocated":
            return (
                f"a page from the page allocator (pfn 0x{pfn:x}), not a kmalloc object "
                "(use free_pages/free_page)"
            )
        return f"not a kmalloc object: its page (pfn 0x{pfn:x}) is {state}"

    def check_page_access(self, addr: int, task: Task | None = None) -> None:
        """Use-after-free check for a non-slab direct-map address (page granularity)."""
        pfn = (addr - PAGE_OFFSET) >> self.page_shift
        state = self.page_state(pfn)
        if state == "free":
            entry = self.slab.freed_entry(addr) or self.slab.freed_entry(
                PAGE_OFFSET + (pfn << self.page_shift)
            )
            raise memory_error(
                "use-after-free",
                addr,
                where="check_access",
                site=caller_site(task, self.kernel.now_ns),
                alloc_site=entry.alloc_site if entry else None,
                free_site=entry.free_site if entry else None,
                detail=f"its page (pfn 0x{pfn:x}) is free",
            )
        if state == "outside":
            raise memory_error(
                "wild-memory-access",
                addr,
                where="check_access",
                site=caller_site(task, self.kernel.now_ns),
                detail="not an address of this kernel's zone",
                show_alloc=False,
                show_free=False,
            )

    def check_access(self, ptr: int, task: Task | None = None) -> None:
        """KASAN-style access check of any pointer: raises MemoryDebugError on use after free."""
        if VMALLOC_START <= ptr < VMALLOC_END:
            self.vmap.check_access(ptr, task)
        else:
            self.slab.check_access(ptr, task)

    def release_reclaimed(self, blocks: Sequence[tuple[int, int]]) -> None:
        """Reclaimed "other users" blocks back to the buddy lists (caller holds zone->lock)."""
        st = self._pstate
        base = self._start_pfn
        buddy = self.zone.buddy
        for pfn, order in blocks:
            i = pfn - base
            st[i : i + (1 << order)] = bytes(1 << order)
            buddy.free(pfn, order, MIGRATE_MOVABLE)

    def check(self) -> None:
        """Consistency check of buddy lists, pcp lists and page states (for tests)."""
        self.zone.buddy.check()
        for pcp in self.pcps:
            pcp.check()
        free = self._pstate.count(PS_FREE)
        on_pcp = sum(p.count for p in self.pcps)
        if free != self.zone.buddy.nr_free + on_pcp:
            raise SimulationError(
                f"page states say {free} free pages, buddy {self.zone.buddy.nr_free} + pcp {on_pcp}"
            )
        if self._pstate.count(PS_OTHER) != self.kswapd.pool.nr_pages:
            raise SimulationError("other-users pages and the reclaimable pool disagree")
