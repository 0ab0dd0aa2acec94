"""mm/page_alloc.c: ``__alloc_pages`` fast and slow paths, the pcp lists, ``zone->lock``.

One node with one zone (ZONE_NORMAL) modelled on 5.8/5.9 (kernel.md 3), the allocator the RFC
was written against, plus the RFC's ``__GFP_FAST_TRY`` and v6.15's ``alloc_pages_nolock()``
(kernel.md 2.4), and the changes that decide the RFC's answer on later kernels (kernel.md 8.1,
8.2), selected by the profile's :class:`~rcukit.mm.versions.MmVersion`. What matters for the
debate is *which locks each request takes*, so every lock the kernel takes on these paths is
taken here through the lock checker:

* the pcp lists (allocation, ``free_unref_page``, drains) are protected by
  ``MmVersion.pcp_lock``, decided once at boot:

  - ``"irq"`` (5.8-5.13): ``local_irq_save()`` only, no lock, on !RT; the -rt patchset's
    per-CPU ``pa_lock`` local_lock, a sleeping ``spinlock_t`` on PREEMPT_RT;
  - ``"local_lock"`` (5.14-5.19): ``local_lock_irqsave(&pagesets.lock)``, lockdep wait type
    LD_WAIT_CONFIG ("Invalid wait context" under a raw lock with PROVE_RAW_LOCK_NESTING even
    on !RT), a sleeping per-CPU ``spinlock_t`` on RT;
  - ``"pcp_spinlock"`` (6.0+): a ``spinlock_t pcp->lock`` per pcp. ``rmqueue_pcplist()`` and
    ``free_unref_page()`` take it with ``pcp_spin_trylock()``: lockdep does not check a
    trylock's wait context and ``rt_spin_trylock()`` never sleeps, so a pcp hit reports
    nothing on any build; a failed trylock falls back to the buddy lists under ``zone->lock``
    (``rmqueue_buddy()``, ``free_one_page()``). Drains take it with ``spin_lock()``;

* an empty pcp list refills in ``rmqueue_bulk`` under ``zone->lock``, a ``spinlock_t`` (the
  RFC's problem (a) and (b): "Invalid wait context" under ``CONFIG_PROVE_RAW_LOCK_NESTING`` and
  a sleeping lock in atomic context on PREEMPT_RT when the caller holds a raw lock);
* the slow path's ``wakeup_kswapd()`` takes ``pgdat->kswapd_wait``'s ``spinlock_t``;
* watermark boosting (5.1+): a fallback steal of a block below a pageblock boosts the zone's
  watermarks (``boost_watermark()``) and, for a request with ``ALLOC_KSWAPD``, sets
  ``ZONE_BOOSTED_WATERMARK``; ``rmqueue()``'s ``out:`` label then clears the bit and calls
  ``wakeup_kswapd()`` for whichever allocation comes next: whatever its gfp mask until 6.4
  (``MmVersion.boost_wake == "always"``: pcp hits, ``__GFP_FAST_TRY`` and gfp 0 included), only
  with ``__GFP_KSWAPD_RECLAIM`` from 6.5. ``alloc_pages_nolock()`` never wakes it;
* direct reclaim sleeps.

Zone-lock acquisitions, pcp-lock acquisitions and kswapd wake-ups made while the task holds
kvfree_rcu's ``krcp->lock`` are also counted apart (``zone_lock_in_krcp``,
``pcp_lock_in_krcp``, ``kswapd_wakeups_in_krcp`` in vmstat), so what the block allocator did
under the raw lock is not lost among the machine's other users. The boost has its own
counters too: ``watermark_boosts`` (``boost_watermark()`` calls that raised the boost),
``kswapd_wake_boosted`` (wake-ups from ``rmqueue()``'s ``out:``), ``watermark_boost_decays``
(kswapd runs that took a boost back); ``pcp_trylock_fail`` counts busy pcp trylocks.
Pages handed out for another migratetype than the one asked for are counted as the kernel
would see them: ``pcp_alloc_other_mt`` for the RFC's pcp loop (no kernel event shows those),
``extfrag_fragmenting_in_krcp`` for ``__rmqueue_fallback()`` steals below a pageblock under
the raw lock (``mm_page_alloc_extfrag`` with ``fragmenting=1``; the event itself is traced
for every steal, with the kernel's fields).

Pageblocks own their pages as in the kernel: the zone's buddy allocator
(:class:`~rcukit.mm.zone.BuddyAllocator`) keeps a migratetype per pageblock and retypes or
claims pageblocks when it steals, and every free path puts a page on its pageblock's
migratetype, read when the page is freed (``free_unref_page_prepare()``,
``__free_pages_ok()``); a pcp drain keeps the pcp list's (``free_pcppages_bulk()``). Which
in-use pages count as movable when a steal weighs a pageblock comes from the page states
(:meth:`PageAlloc.nr_movable_pages`).

Sharing between simulated CPUs follows :mod:`rcukit.sched.sim`: a CPU's pcp lists are touched
without synchronisation; the zone, its lock and kswapd's wait queue only after ``task.sync()``.
The watermark check reads the zone's free-page count without syncing, as the kernel reads
``NR_FREE_PAGES`` without ``zone->lock`` (its value may be a few operations stale or ahead,
like vmstat drift).

Not modelled: compaction (and the kcompactd wake after a boost), the OOM killer (a request
that would need it fails instead, counted as ``pgalloc_oom_fail``; ``__GFP_NOFAIL`` raises),
deferred struct-page init (so the RFC's deferred-grow hunk has nothing to skip),
``drain_all_pages`` and remote pcp drains, MIGRATE_HIGHATOMIC reserves, ALLOC_NOFRAGMENT,
5.9's exemption of GFP_ATOMIC order-0 requests from the boost at the min watermark, the
5.13+ per-order pcp lists and 5.14+ ``zone_highsize()``, and NUMA. Reclaimed pages go straight
back to the buddy lists.

The zone's structures live in :mod:`rcukit.mm.zone`, page states and addresses in
:mod:`rcukit.mm.memmap`; ``kernel.mm`` (:class:`rcukit.mm.mm.Mm`) composes them with this
module's :class:`PageAlloc`, kswapd, slab and vmalloc.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from rcukit.config import CostModel
from rcukit.errors import MemoryDebugError, PageAllocError, SimulationError
from rcukit.locking import LockChecker, LockKind
from rcukit.mm.gfp import (
    GFP,
    MIGRATE_MOVABLE,
    MIGRATE_PCPTYPES,
    MIGRATE_UNMOVABLE,
    AllocFlags,
    format_gfp,
    gfp_migratetype,
    gfp_to_alloc_flags,
    validate_gfp,
)
from rcukit.mm.kswapd import MAX_RECLAIM_RETRIES, SWAP_CLUSTER_MAX
from rcukit.mm.memmap import (
    ORDER0_MT,
    PAGE_OFFSET,
    PS_FREE,
    PS_OTHER,
    page_struct,
)
from rcukit.mm.show_mem import WarnAlloc
from rcukit.mm.zone import (
    MAX_ORDER,
    PAGEBLOCK_ORDER,
    BuddyAllocator,
    FallbackSteal,
    PerCpuPages,
    pcp_high_batch,
    zone_watermark_ok,
)
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rcukit.locking.locks import Lock
    from rcukit.mm.mm import Mm


#: What ``alloc_pages_nolock()`` uses internally (kernel.md 2.4): never warns, always zeroed,
#: never dips into reserves.
NOLOCK_GFP = int(GFP.NOWARN | GFP.ZERO | GFP.NOMEMALLOC)
#: Orders above this are "costly" (and never served by ``alloc_pages_nolock``).
PAGE_ALLOC_COSTLY_ORDER = 3

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

#: The lockdep class of kvfree_rcu's ``krcp->lock`` (``__RAW_SPIN_LOCK_UNLOCKED(krc.lock)``),
#: by which zone-lock, pcp-lock and kswapd-wake attribution recognises the raw lock.
KRCP_LOCK_CLASS = "krc.lock"
#: pcp lock classes as lockdep prints them: the -rt patchset's per-CPU ``pa_lock.l`` (5.x-rt),
#: 5.14's ``pagesets.lock`` (``INIT_LOCAL_LOCK(lock)``, printed ``lock#2`` in the 5.14 merge
#: window syzbot reports from ``rmqueue_pcplist``) and 6.0's ``&pcp->lock``.
PCP_LOCK_RT_PATCH = "pa_lock.l"
PCP_LOCK_LOCAL_LOCK = "lock#2"
PCP_LOCK_SPINLOCK = "&pcp->lock"
#: ``_fast_mark`` while the lock-free pcp fast path is closed (a pcp lock or a boost flag).
_NO_FAST = 1 << 62  # more pages than any zone
#: Page state byte -> 1 for an in-use page ``move_freepages()`` counts as movable
#: (``PageLRU() || __PageMovable()``): a MOVABLE allocation's order-0 or head page, and the
#: "other users" pages reclaim takes back (page cache and anonymous memory: LRU pages). Tails,
#: slab pages, UNMOVABLE and RECLAIMABLE allocations, pcp and buddy pages are not.
_MOVABLE_STATE = bytes(
    1 if v == PS_OTHER or (MIGRATE_MOVABLE + 1) << 4 <= v < (MIGRATE_MOVABLE + 1) << 4 | MAX_ORDER
    else 0
    for v in range(256)
)


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


class PageAlloc:
    """``kernel.mm.page_alloc``: mm/page_alloc.c's allocation and free paths over the one zone.

    Owns what page_alloc.c owns: the per-CPU pagesets (``setup_zone_pageset()``), the GFP plans,
    ``warn_alloc``'s ratelimit and the failure counts; reads the zone, the memory map, kswapd and
    ``fail_page_alloc`` from the :class:`~rcukit.mm.mm.Mm` that composes them.
    """

    def __init__(self, mm: Mm) -> None:
        kernel = mm.kernel
        cfg = kernel.config
        mmc = cfg.mm
        self.kernel = kernel
        self.cost = cfg.cost
        self.locks = kernel.locks
        self.vmstat = kernel.vmstat
        self._vmstat_counts = kernel.vmstat.counts  # pcp hits and frees bump them inline
        self.tp = kernel.tracer.tp  # the tracepoints' static keys
        self.preempt_rt = cfg.preempt_rt
        self.spin_lock_cost = mm.spin_lock_cost
        self.zero_cost = cfg.cost.zero_page_ns(cfg.page_size)
        self.zone = zone = mm.zone
        self.memmap = memmap = mm.memmap
        self.kswapd = mm.kswapd
        self.fail_page_alloc = mm.fault.fail_page_alloc
        # Locals of the hot paths, read once.
        self._buddy = buddy = zone.buddy
        #: ``get_pfnblock_migratetype()``'s bytes: a free reads ``[(pfn >> 9) - _pb_base]``.
        self._pbmt = buddy.pageblock_mt
        self._pb_base = buddy.pb_base
        buddy.nr_movable = self.nr_movable_pages
        buddy.extfrag.clear()  # boot-time steals (memblock-like) are no task's events
        self._pstate = memmap.pstate
        self._start_pfn = memmap.start_pfn
        self._nr_pages = memmap.nr_pages
        self._page_shift = memmap.page_shift

        nr = zone.managed_pages
        high, batch = pcp_high_batch(nr, cfg.page_size, mmc.pcp_batch, mmc.pcp_high)
        #: Per-CPU ``struct per_cpu_pages``, indexed by CPU id (also in ``cpu.data["pcp"]``).
        self.pcps = [PerCpuPages(high=high, batch=batch) for _ in range(cfg.nr_cpus)]
        for cpu, pcp in zip(kernel.sim.cpus, self.pcps, strict=True):
            cpu.data["pcp"] = pcp
        version = cfg.mm_version
        #: Per-CPU pcp locks (None: IRQ-off only, 5.8 mainline !RT), see the module docstring.
        self.pcp_locks = self._pcp_locks(version.pcp_lock, cfg.nr_cpus)
        #: 6.0+: ``rmqueue_pcplist``/``free_unref_page`` use ``pcp_spin_trylock()``.
        self._pcp_trylock = version.pcp_lock == "pcp_spinlock"
        # local_lock_irqsave()/pa_lock/6.0's pcp_spin_trylock_irqsave() disable IRQs (on !RT);
        # 6.2+ pcp_spin_trylock() does not.
        self._pcp_irqsave = version.pcp_irqsave
        #: 5.1-6.4: ``rmqueue()`` wakes kswapd for a boosted watermark whatever the gfp.
        self._boost_wake_always = version.boost_wake == "always"
        #: What the lock-free pcp fast path compares free pages with: the (boosted) low
        #: watermark, or ``_NO_FAST`` when every order-0 request must go through ``rmqueue()``
        #: (a pcp lock to take, or ZONE_BOOSTED_WATERMARK to act on).
        self._fast_mark = _NO_FAST
        self.update_fast_mark()

        self._fault_on = self.fail_page_alloc.enabled
        #: The plan of every GFP mask seen so far (capped), keyed by the mask.
        self.plans: dict[int, _GfpPlan] = {}
        self._nolock_plan = _GfpPlan(NOLOCK_GFP, self.cost, self.zero_cost)
        #: Allocation failures keyed by the failing mask as ``format_gfp`` prints it.
        self.failures_by_gfp: dict[str, int] = {}
        #: ``warn_alloc`` lines (ratelimited like the kernel's), oldest first.
        self.warnings: list[str] = []
        # Blocks free_pages_nolock() could not give back (its zone trylock failed).
        self._parked: list[tuple[int, int]] = []
        #: ``warn_alloc()`` with its ``nopage_rs`` ratelimit and ``show_mem()`` (show_mem.py).
        self.warn = WarnAlloc(self)
        #: Tasks for which :meth:`lock_zone` declines ``zone->lock`` (never-merged proposal:
        #: see ``RawZoneLockSource`` in rcukit.rcu.kvfree.variants); empty otherwise.
        self.zone_lock_decliners: set[Task] = set()

    def _pcp_locks(self, pcp_lock: str, nr_cpus: int) -> list[Lock] | None:
        """One pcp lock per CPU as the version and build have it, or None (IRQ-off only)."""
        rt = self.preempt_rt
        if pcp_lock == "irq":
            if not rt:
                return None
            name, kind = PCP_LOCK_RT_PATCH, LockKind.SPINLOCK
        elif pcp_lock == "local_lock":
            name = PCP_LOCK_LOCAL_LOCK
            kind = LockKind.SPINLOCK if rt else LockKind.LOCAL_LOCK
        else:
            name, kind = PCP_LOCK_SPINLOCK, LockKind.SPINLOCK
        return [self.kernel.new_lock(name, kind) for _ in range(nr_cpus)]

    def update_fast_mark(self) -> None:
        """Recompute ``_fast_mark`` after the boost or ZONE_BOOSTED_WATERMARK changed."""
        zone = self.zone
        if self.pcp_locks is not None or zone.boosted:
            self._fast_mark = _NO_FAST
        else:
            self._fast_mark = zone.wmark.low + zone.watermark_boost

    @staticmethod
    def in_krcp(task: Task) -> bool:
        """Whether ``task`` holds a kvfree_rcu ``krcp->lock`` (a list, cheaper than any()'s)."""
        return KRCP_LOCK_CLASS in [h.lock.name for h in task.held_locks]

    # -- small shared helpers ---------------------------------------------------------------------
    def gfp_name(self, gfp: int) -> str:
        plan = self.plans.get(gfp)
        return plan.name if plan is not None else format_gfp(gfp)

    def gfp_plan(self, gfp: int) -> _GfpPlan:
        """The plan of ``gfp`` (``validate_gfp()``: bad bits raise GfpError), cached."""
        plan = _GfpPlan(gfp, self.cost, self.zero_cost)
        if len(self.plans) < 4096:
            self.plans[int(gfp)] = plan
        return plan

    def count_zone_lock(self) -> None:
        self.vmstat.inc("zone_lock_acquisitions")

    async def lock_zone(self, task: Task, ip: str, trylock: bool) -> Lock | None:
        """``spin_lock_irqsave(&zone->lock)`` (or its trylock) after syncing with other CPUs.

        Returns the held lock, or None when ``trylock`` found it busy (counted), or when
        ``task`` is one of :attr:`zone_lock_decliners` (Wilcox's ``zone_lock(zone)`` that
        declines on RT: the raw-zone-lock variant).
        """
        if self.zone_lock_decliners and task in self.zone_lock_decliners:
            self.vmstat.inc("zone_lock_declined")
            return None
        await task.sync()
        lock = self.zone.lock
        if trylock:
            if not self.locks.trylock(task, lock, ip, irqsave=True):
                self.vmstat.inc("zone_lock_trylock_fail")
                return None
        else:
            self.locks.acquire(task, lock, ip, irqsave=True)
        self.vmstat.inc("zone_lock_acquisitions")
        if self.in_krcp(task):
            self.vmstat.inc("zone_lock_in_krcp")
        return lock

    def pcp_lock(self, task: Task, ip: str, trylock: bool) -> Lock | None:
        """This CPU's pcp lock, taken (or tried) as the version does; None when busy.

        Only called when :attr:`pcp_locks` is set. The lock is per CPU, so no sync is needed.
        """
        assert self.pcp_locks is not None
        lock = self.pcp_locks[task.cpu.id]
        if trylock:
            if not self.locks.trylock(task, lock, ip, irqsave=self._pcp_irqsave):
                self.vmstat.inc("pcp_trylock_fail")
                return None
        else:
            self.locks.acquire(task, lock, ip, irqsave=self._pcp_irqsave)
        task.cpu.local_ns += self.spin_lock_cost  # task.charge(): every pcp hit comes here
        # in_krcp(task); the pcp lock just taken is one of the held locks and is not krc.lock
        held = task.held_locks
        if len(held) > 1 and KRCP_LOCK_CLASS in [h.lock.name for h in held]:
            self.vmstat.inc("pcp_lock_in_krcp")
        return lock

    def pcp_trylock_brief(self, task: Task) -> Lock | None:
        """:meth:`pcp_lock` as a 6.0+ ``pcp_spin_trylock()`` that succeeds, for a critical
        section that cannot sleep, take another lock or emit an event (a pcp hit or free with
        tracing off): the lock, or None, with nothing done, when that does not apply or the
        lock is busy (the caller then takes :meth:`pcp_lock`, which counts the failure).

        A trylock checks no wait context and reports nothing, and nothing inside looks at the
        held-lock stack or the IRQ and preemption state, so the lock model has only the
        acquisition to count here (no ``HeldLock`` pushed and popped); the caller sets the
        lock's ``free_at_ns`` at its ``pcp_spin_unlock()``.
        """
        locks = self.pcp_locks
        tp = self.tp
        if (
            locks is None
            or not self._pcp_trylock
            or tp.mm_page_alloc
            or tp.mm_page_free
            or type(self.locks) is not LockChecker  # somebody watches the lock model (lock_pcp)
        ):
            return None
        cpu = task.cpu
        lock = locks[cpu.id]
        if lock.owner is not None or lock.free_at_ns > cpu.local_ns:
            return None
        lock.acquisitions += 1
        cpu.local_ns += self.spin_lock_cost
        held = task.held_locks
        if held and KRCP_LOCK_CLASS in [h.lock.name for h in held]:
            self.vmstat.inc("pcp_lock_in_krcp")
        return lock

    def nr_free_pages(self) -> int:
        """``nr_free_pages()``: free pages on the buddy lists (the watermark gauge)."""
        return self.zone.buddy.nr_free

    def nr_movable_pages(self, start_pfn: int, end_pfn: int) -> int:
        """``move_freepages()``'s ``num_movable`` over ``[start_pfn, end_pfn)``: the in-use pages
        ``PageLRU() || __PageMovable()`` would pass, read from the page states
        (``_MOVABLE_STATE``; the zone's buddy allocator asks it in a whole-pageblock steal)."""
        base = self._start_pfn
        return self._pstate[start_pfn - base : end_pfn - base].translate(_MOVABLE_STATE).count(1)


    # -- allocation: the hot path ------------------------------------------------------------------
    async def alloc_pages(self, task: Task, gfp: int, order: int = 0) -> int | None:
        """``alloc_pages(gfp, order)``: a PFN, or None.

        Order 0 with free memory above the (boosted) low watermark and a page on this CPU's
        pcp list is the fast path: no lock, no sync. It is closed (``_fast_mark``) on builds
        whose pcp lists take a lock and while ZONE_BOOSTED_WATERMARK is set, so those requests
        go through ``rmqueue()``. Everything else goes through :meth:`_alloc_slow`.
        """
        plan = self.plans.get(gfp)
        if plan is None:
            plan = self.gfp_plan(gfp)
        if order and not 0 < order < MAX_ORDER:
            raise PageAllocError(f"order {order} is invalid: allowed 0..{MAX_ORDER - 1}")
        if plan.might_sleep:
            self.locks.might_sleep(task, "__alloc_pages_nodemask")
        if self._fault_on and self.fail_page_alloc.should_fail(plan.gfp, order):
            self._injected_failure(task, plan, order)
            return None
        if order == 0:
            free = self._buddy.nr_free
            pcp = self.pcps[task.cpu.id]
            lst = pcp.lists[plan.mt]
            if free > self._fast_mark:
                if lst:
                    return self._pcp_take(task, pcp, lst, plan)
            elif lst and self.pcp_locks is not None and not plan.fast_try:
                zone = self.zone
                if free > zone.wmark.low + zone.watermark_boost:
                    return await self._rmqueue_pcplist_hit(task, plan, pcp, lst)
        return await self._alloc_slow(task, plan, order)

    def alloc_page_nowait(self, task: Task, gfp: int) -> int | None:
        """:meth:`alloc_pages` ``(gfp, 0)`` when it is a pcp hit that cannot sleep: the lock-free
        one, or (6.0+, tracing off) :meth:`_rmqueue_pcplist_hit` with its trylock succeeding
        and no boosted watermark to act on. The same steps in the same order, without a
        coroutine; None, with nothing done, whenever anything else could happen (fault
        injection, an empty list, the low watermark, a busy pcp lock), so that the caller
        then awaits :meth:`alloc_pages` itself. Not a kernel interface: the slab's refill
        of a run-based flood (``SlabAllocator.kmalloc_refill_nowait``).
        """
        plan = self.plans.get(gfp)
        if plan is None or self._fault_on:
            return None
        cpu = task.cpu
        pcp = self.pcps[cpu.id]
        lst = pcp.lists[plan.mt]
        if not lst:
            return None
        free = self._buddy.nr_free
        if free <= self._fast_mark:
            zone = self.zone
            locks = self.pcp_locks
            if (
                locks is None
                or plan.fast_try
                or zone.boosted
                or free <= zone.wmark.low + zone.watermark_boost
                or not self._pcp_trylock
                or self.tp.mm_page_alloc
                or type(self.locks) is not LockChecker
            ):
                return None
            lock = locks[cpu.id]
            if lock.owner is not None or lock.free_at_ns > cpu.local_ns:
                return None
            if plan.might_sleep:
                self.locks.might_sleep(task, "__alloc_pages_nodemask")
            # pcp_trylock_brief(), which succeeds: checked above, and a report takes no time
            lock.acquisitions += 1
            cpu.local_ns += self.spin_lock_cost
            held = task.held_locks
            if held and KRCP_LOCK_CLASS in [h.lock.name for h in held]:
                self.vmstat.inc("pcp_lock_in_krcp")
            pfn = self._pcp_take(task, pcp, lst, plan)
            lock.free_at_ns = cpu.local_ns
            return pfn
        if plan.might_sleep:
            self.locks.might_sleep(task, "__alloc_pages_nodemask")
        return self._pcp_take(task, pcp, lst, plan)

    async def _rmqueue_pcplist_hit(
        self, task: Task, plan: _GfpPlan, pcp: PerCpuPages, lst: deque[int]
    ) -> int | None:
        """:meth:`_alloc_slow` for an order-0 request above the low watermark whose pcp list
        has a page, on a build whose pcp lists take a lock: the same steps (the pcp lock as
        ``rmqueue_pcplist()`` takes it, the page, ``rmqueue()``'s ``out:``) without the five
        coroutine frames in between, since nothing on the way can sleep or refill.
        """
        first = _ALLOC_WMARK_LOW | (_ALLOC_KSWAPD if plan.wakes_kswapd else 0)
        pfn: int | None
        brief = self.pcp_trylock_brief(task)
        if brief is not None:
            pfn = self._pcp_take(task, pcp, lst, plan)
            brief.free_at_ns = task.cpu.local_ns  # pcp_spin_unlock()
        elif (lock := self.pcp_lock(task, "rmqueue_pcplist", self._pcp_trylock)) is not None:
            pfn = self._pcp_take(task, pcp, lst, plan)
            self.locks.release(task, lock)
        else:
            # 6.0+: the pcp trylock failed, rmqueue_buddy() under zone->lock instead
            pfn = await self.rmqueue_buddy(task, plan, 0, first)
        if self.zone.boosted and self._boost_wake_due(first):
            await self.wakeup_boosted(task)
        if pfn is None:
            return await self.alloc_pages_slowpath(task, plan, 0)
        return pfn

    def _pcp_take(self, task: Task, pcp: PerCpuPages, lst: deque[int], plan: _GfpPlan) -> int:
        """A pcp hit: the list head, ``pcp_alloc_ns`` (and the zeroing of ``__GFP_ZERO``),
        ``prep_new_page()``'s page state, ``pgalloc_normal`` and ``mm_page_alloc``."""
        pfn = lst.popleft()
        pcp.count -= 1
        self._pstate[pfn - self._start_pfn] = plan.state0
        task.cpu.local_ns += plan.hit_ns  # task.charge(), inline: every pcp hit comes here
        vc = self._vmstat_counts
        vc["pgalloc_normal"] = vc.get("pgalloc_normal", 0) + 1
        if self.tp.mm_page_alloc:
            self._trace_alloc(task, pfn, 0, plan.mt, plan)
        return pfn

    async def alloc_pages_each(self, task: Task, gfp: int, n: int) -> list[int]:
        """``n`` calls of ``alloc_pages(gfp, 0)`` one after another, stopping at the first
        that fails: the pages got, in order. Not a kernel interface: for a caller that
        allocates a burst of single pages (the background load), so that the lock-free pcp
        hits, which never sleep, run in this one frame; every other page (a refill, a locked
        pcp, the slow path, fault injection) is :meth:`alloc_pages` itself.
        """
        plan = self.plans.get(gfp)
        if plan is None:
            plan = self.gfp_plan(gfp)
        got: list[int] = []
        mt = plan.mt
        while len(got) < n:
            pcp = self.pcps[task.cpu.id]
            lst = pcp.lists[mt]
            if lst and not self._fault_on and self._buddy.nr_free > self._fast_mark:
                if plan.might_sleep:
                    self.locks.might_sleep(task, "__alloc_pages_nodemask")
                got.append(self._pcp_take(task, pcp, lst, plan))
                continue
            pfn = await self.alloc_pages(task, gfp, 0)
            if pfn is None:
                break
            got.append(pfn)
        return got

    def prep_new_page(self, task: Task, pfn: int, order: int, plan: _GfpPlan) -> int:
        """``prep_new_page`` + accounting + ``mm_page_alloc``.

        The page state keeps the migratetype asked for, whatever list the page came from: it
        says whether the page is movable (``move_freepages()``), while its free reads its
        pageblock's migratetype. ``mm_page_alloc`` prints the migratetype asked for too (5.8
        ``__alloc_pages_nodemask()`` traces ``ac.migratetype``), so the RFC loop's page from
        another list does not show.
        """
        self.memmap.set_allocated(pfn, order, plan.mt)
        if plan.zero:
            task.charge(self.zero_cost << order)
        self.vmstat.inc("pgalloc_normal", 1 << order)
        if self.tp.mm_page_alloc:
            self._trace_alloc(task, pfn, order, plan.mt, plan)
        return pfn

    def _trace_alloc(self, task: Task, pfn: int, order: int, mt: int, plan: _GfpPlan) -> None:
        self._trace_page(task, "mm_page_alloc", pfn, order, mt, f"gfp_flags={plan.name}")

    def _trace_page(self, task: Task, event: str, pfn: int, order: int, mt: int, tail: str) -> None:
        """What ``mm_page_alloc`` and the ``mm_page`` event class print first, then ``tail``."""
        self.kernel.trace(
            task,
            event,
            f"page={page_struct(pfn):016x} pfn=0x{pfn:x} order={order} migratetype={mt} {tail}",
        )

    # -- allocation: the rest of __alloc_pages_nodemask --------------------------------------------
    async def _alloc_slow(self, task: Task, plan: _GfpPlan, order: int) -> int | None:
        """``__alloc_pages_nodemask`` past a pcp hit: the low-watermark try, then the slowpath."""
        first = _ALLOC_WMARK_LOW | (_ALLOC_KSWAPD if plan.wakes_kswapd else 0)
        pfn = await self.get_page_from_freelist(task, plan, order, first)
        if pfn is not None:
            return pfn
        if plan.fast_try:
            # The RFC: "Bypass slow path if __GFP_FAST_TRY" (goto out: no warn_alloc either).
            self._count_failure(plan)
            return None
        return await self.alloc_pages_slowpath(task, plan, order)

    async def alloc_pages_slowpath(self, task: Task, plan: _GfpPlan, order: int) -> int | None:
        """``__alloc_pages_slowpath`` of 5.8 (kernel.md 3.4), minus compaction and OOM."""
        alloc_flags = plan.slow_flags
        kswapd = self.kswapd
        if alloc_flags & _ALLOC_KSWAPD:
            await kswapd.wakeup(task, plan.gfp, order)
        pfn = await self.get_page_from_freelist(task, plan, order, alloc_flags)
        if pfn is not None:
            return pfn
        no_progress = 0
        loops = 0
        while True:
            loops += 1
            if alloc_flags & _ALLOC_KSWAPD:
                await kswapd.wakeup(task, plan.gfp, order)
            flags = alloc_flags
            if self.gfp_pfmemalloc_allowed(task, plan):
                flags = _ALLOC_NO_WATERMARKS
            pfn = await self.get_page_from_freelist(task, plan, order, flags)
            if pfn is not None:
                return pfn
            if not plan.can_reclaim or task.data.get("PF_MEMALLOC"):
                break
            progress = await self.alloc_pages_direct_reclaim(task, plan, order)
            pfn = await self.get_page_from_freelist(task, plan, order, flags)
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
        await self.nopage(task, plan, order)
        return None

    def gfp_pfmemalloc_allowed(self, task: Task, plan: _GfpPlan) -> bool:
        """``__gfp_pfmemalloc_flags``: MEMALLOC, or a PF_MEMALLOC task outside interrupts."""
        if plan.nomemalloc:
            return False
        if plan.memalloc:
            return True
        return bool(task.data.get("PF_MEMALLOC")) and not (task.in_hardirq or task.in_softirq)

    async def alloc_pages_direct_reclaim(self, task: Task, plan: _GfpPlan, order: int) -> int:
        """``__alloc_pages_direct_reclaim``: a real sleep (schedule point), then 32 pages back."""
        self.locks.schedule(task, "__perform_reclaim")
        self.vmstat.inc("allocstall_normal")
        if self.tp.mm_vmscan_direct_reclaim_begin:
            self.kernel.trace(
                task, "mm_vmscan_direct_reclaim_begin", f"order={order} gfp_flags={plan.name}"
            )
        # the schedule() check is done above, under the kernel's name for the caller
        await task.sim.sleep(task, self.cost.direct_reclaim_ns)
        n = await self.kswapd.shrink_node(task, SWAP_CLUSTER_MAX, charge_scan=False)
        self.vmstat.inc("pgsteal_direct", n)
        return n

    async def get_page_from_freelist(
        self, task: Task, plan: _GfpPlan, order: int, alloc_flags: int
    ) -> int | None:
        """``get_page_from_freelist``: the watermark check for ``alloc_flags``, then ``rmqueue``.

        The mark is ``wmark_pages()``: the zone's watermark plus its boost.
        """
        zone = self.zone
        if not alloc_flags & _ALLOC_NO_WATERMARKS:
            wm = zone.wmark
            idx = alloc_flags & _ALLOC_WMARK_MASK
            mark = (wm.min if idx == 0 else (wm.low if idx == 1 else wm.high)) + (
                zone.watermark_boost
            )
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
        return await self.rmqueue(task, plan, order, alloc_flags)

    async def rmqueue(
        self, task: Task, plan: _GfpPlan, order: int, alloc_flags: int
    ) -> int | None:
        """``rmqueue()``: order 0 from the pcp lists, higher orders under ``zone->lock``.

        6.0+ (pcp spinlock) falls back to ``rmqueue_buddy()`` when the pcp trylock fails or
        the list stays empty, as the kernel does; ``__GFP_FAST_TRY`` never does (its point is
        never taking ``zone->lock``). The ``out:`` label acts on ZONE_BOOSTED_WATERMARK.
        """
        if order == 0:
            pfn = await self.rmqueue_pcplist(task, plan, alloc_flags)
            if pfn is None and self._pcp_trylock and not plan.fast_try:
                pfn = await self.rmqueue_buddy(task, plan, 0, alloc_flags)
        elif alloc_flags & _ALLOC_TRYLOCK and order > PAGE_ALLOC_COSTLY_ORDER:
            return None
        else:
            pfn = await self.rmqueue_buddy(task, plan, order, alloc_flags)
        if self._boost_wake_due(alloc_flags):  # out:
            await self.wakeup_boosted(task)
        return pfn

    def _boost_wake_due(self, alloc_flags: int) -> bool:
        """``rmqueue()``'s ``out:`` test: ZONE_BOOSTED_WATERMARK set, and the request may wake
        kswapd for it (``ALLOC_KSWAPD``; before 6.5 any request but a trylock one)."""
        return self.zone.boosted and bool(
            alloc_flags & _ALLOC_KSWAPD
            or (self._boost_wake_always and not alloc_flags & _ALLOC_TRYLOCK)
        )

    async def wakeup_boosted(self, task: Task) -> None:
        """``rmqueue()``'s ``out:``: clear ZONE_BOOSTED_WATERMARK, ``wakeup_kswapd(zone, 0, 0)``.

        Whatever the gfp of the request that gets here (kernel.md 8.2), so a pcp hit under a
        raw lock takes ``kswapd_wait``'s ``spinlock_t`` when kswapd sleeps. ``zone->flags`` is
        shared: the task syncs first, so a CPU whose clock is behind runs first and may find
        the bit another CPU's steal set before that CPU reaches its own ``out:`` (the race
        6.5's gating was written for); whoever tests it first clears it and wakes kswapd.
        """
        await task.sync()
        zone = self.zone
        if not zone.boosted:
            return
        zone.boosted = False
        self.update_fast_mark()
        if await self.kswapd.wakeup(task, 0, 0):
            self.vmstat.inc("kswapd_wake_boosted")

    def count_other_mt_pick(self, task: Task) -> None:
        """The RFC's ``rmqueue_pcplist()`` loop took the page from another migratetype's pcp
        list than the request's (``pcp_alloc_other_mt``; ``_in_krcp`` under kvfree_rcu's
        raw lock). No kernel counter or event shows it: 5.8's ``mm_page_alloc`` prints the
        requested migratetype (``ac.migratetype``), and the normal allocator never does it
        (an empty list is refilled by ``rmqueue_bulk()``, whose ``__rmqueue()`` falls back to
        another type's *free lists* only when its own are empty)."""
        self.vmstat.inc("pcp_alloc_other_mt")
        if self.in_krcp(task):
            self.vmstat.inc("pcp_alloc_other_mt_in_krcp")

    def extfrag_steals(self, task: Task, alloc_flags: int) -> None:
        """What each ``__rmqueue_fallback()`` steal the zone just made (``buddy.extfrag``) does
        beyond the free lists: ``steal_suitable_fallback()``'s boost, then the
        ``mm_page_alloc_extfrag`` event (mm/page_alloc.c, v5.8; read in v6.1, the same).

        Caller holds ``zone->lock``. A fragmenting steal (fallback order below
        ``pageblock_order``) calls ``boost_watermark()``; a request with ``ALLOC_KSWAPD`` also
        sets ZONE_BOOSTED_WATERMARK (5.0's "do not wake kswapd with zone lock held": the wake
        waits for ``rmqueue()``'s ``out:``). Fragmenting steals made while ``task`` holds
        ``krcp->lock`` are also counted as ``extfrag_fragmenting_in_krcp``: each is an
        ``mm_page_alloc_extfrag`` event with ``fragmenting=1``, the one trace the kernel gives
        of a page placed in another migratetype's pageblock.
        """
        zone = self.zone
        steals = zone.buddy.extfrag
        in_krcp = self.in_krcp(task)
        for steal in steals:
            if steal.fragmenting:
                if in_krcp:
                    self.vmstat.inc("extfrag_fragmenting_in_krcp")
                if zone.boost_watermark():
                    self.vmstat.inc("watermark_boosts")
                    if alloc_flags & _ALLOC_KSWAPD:
                        zone.boosted = True
            if self.tp.mm_page_alloc_extfrag:
                self._trace_extfrag(task, steal)
        steals.clear()
        self.update_fast_mark()

    def _trace_extfrag(self, task: Task, steal: FallbackSteal) -> None:
        """``mm_page_alloc_extfrag`` as v5.8's include/trace/events/kmem.h prints it."""
        pfn = steal.pfn
        self.kernel.trace(
            task,
            "mm_page_alloc_extfrag",
            f"page={page_struct(pfn):016x} pfn=0x{pfn:x} alloc_order={steal.alloc_order} "
            f"fallback_order={steal.fallback_order} pageblock_order={PAGEBLOCK_ORDER} "
            f"alloc_migratetype={steal.alloc_migratetype} "
            f"fallback_migratetype={steal.fallback_migratetype} "
            f"fragmenting={int(steal.fragmenting)} "
            f"change_ownership={int(steal.change_ownership)}",
        )

    async def rmqueue_buddy(
        self, task: Task, plan: _GfpPlan, order: int, alloc_flags: int
    ) -> int | None:
        """A block straight off the buddy lists under ``zone->lock`` (``rmqueue_buddy()``)."""
        lock = await self.lock_zone(task, "rmqueue", bool(alloc_flags & _ALLOC_TRYLOCK))
        if lock is None:
            return None
        mt = plan.mt
        buddy = self.zone.buddy
        pfn = buddy.rmqueue(order, mt)
        if buddy.extfrag:
            self.extfrag_steals(task, alloc_flags)
        task.charge(self.spin_lock_cost + self.cost.buddy_page_ns)
        self.locks.release(task, lock)
        if pfn is None:
            return None
        if self.tp.mm_page_alloc_zone_locked:
            self._trace_zone_locked(task, pfn, order, mt, 0)
        task.charge(self.cost.pcp_alloc_ns)
        return self.prep_new_page(task, pfn, order, plan)

    async def rmqueue_pcplist(self, task: Task, plan: _GfpPlan, alloc_flags: int) -> int | None:
        """``rmqueue_pcplist``: an order-0 page from this CPU's list, refilled when empty.

        Under this kernel's pcp protection (module docstring): none, ``pa_lock``/``pagesets``
        local_lock, or a ``pcp->lock`` trylock (always a trylock from 6.0; also for
        ``ALLOC_TRYLOCK``). A busy trylock returns None.
        """
        if self.pcp_locks is None:
            return await self._rmqueue_pcplist(task, plan, alloc_flags)
        lock = self.pcp_lock(
            task, "rmqueue_pcplist", self._pcp_trylock or bool(alloc_flags & _ALLOC_TRYLOCK)
        )
        if lock is None:
            return None
        pfn = await self._rmqueue_pcplist(task, plan, alloc_flags)
        self.locks.release(task, lock)
        return pfn

    async def _rmqueue_pcplist(
        self, task: Task, plan: _GfpPlan, alloc_flags: int
    ) -> int | None:
        """``__rmqueue_pcplist``: the list access itself (the caller holds the protection)."""
        pcp = self.pcps[task.cpu.id]
        lists = pcp.lists
        if plan.fast_try:
            # The RFC's loop: lists[mt .. MIGRATE_PCPTYPES-1], never rmqueue_bulk.
            mt = next((m for m in range(plan.mt, MIGRATE_PCPTYPES) if lists[m]), -1)
            if mt < 0:
                return None
            if mt != plan.mt:
                self.count_other_mt_pick(task)
        else:
            mt = plan.mt
            if not lists[mt] and not await self.rmqueue_bulk(
                task, pcp, mt, pcp.batch, alloc_flags
            ):
                return None
        pfn = lists[mt].popleft()
        pcp.count -= 1
        task.charge(self.cost.pcp_alloc_ns)
        return self.prep_new_page(task, pfn, 0, plan)

    async def rmqueue_bulk(
        self, task: Task, pcp: PerCpuPages, mt: int, count: int, alloc_flags: int
    ) -> int:
        """``rmqueue_bulk``: up to ``count`` order-0 pages onto ``pcp``'s list ``mt``.

        Takes ``zone->lock`` (trylock for ``ALLOC_TRYLOCK``) and calls ``__rmqueue`` in a loop,
        appending at the tail as the kernel does; stops early when the zone runs dry and returns
        how many pages it moved (0 also when the trylock failed). A fallback steal below a
        pageblock boosts the watermarks (:meth:`extfrag_steals`).
        """
        if count < 0:
            raise PageAllocError(f"count {count} is invalid: must be >= 0")
        lock = await self.lock_zone(task, "rmqueue_bulk", bool(alloc_flags & _ALLOC_TRYLOCK))
        if lock is None:
            return 0
        buddy = self.zone.buddy
        pages = buddy.rmqueue_pages(mt, count)
        if buddy.extfrag:
            self.extfrag_steals(task, alloc_flags)
        n = len(pages)
        task.charge(self.spin_lock_cost + n * self.cost.buddy_page_ns)
        self.locks.release(task, lock)
        self.vmstat.inc("pcp_refill")
        if n:
            pcp.lists[mt].extend(pages)
            pcp.count += n
            if self.tp.mm_page_alloc_zone_locked:
                for pfn in pages:
                    self._trace_zone_locked(task, pfn, 0, mt, 1)
        return n

    def _trace_zone_locked(self, task: Task, pfn: int, order: int, mt: int, refill: int) -> None:
        self._trace_page(
            task, "mm_page_alloc_zone_locked", pfn, order, mt, f"percpu_refill={refill}"
        )

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
        pfn = await self.get_page_from_freelist(
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
        if self.tp.fail_page_alloc:
            self.kernel.trace(
                task, "fail_page_alloc", f"order={order} gfp_flags={plan.name} injected=1"
            )

    async def nopage(self, task: Task, plan: _GfpPlan, order: int) -> None:
        """The slow path's ``nopage:`` label: count the failure and ``warn_alloc()``, which
        for a mask without ``__GFP_NOWARN`` prints and runs ``show_mem()`` (zone->lock)."""
        self._count_failure(plan)
        g = plan.gfp
        # "mode:%#x(%pGg)": C's %#x prints 0 as "0", and %pGg prints no flag names for 0.
        mode = f"{g:#x}({plan.name})" if g else "0()"
        await self.warn.warn_alloc(
            task,
            plan.nowarn,
            f"{task.comm}: page allocation failure: order:{order}, mode:{mode}, "
            "nodemask=(null)",
        )

    def warn_alloc(self, task: Task, line: str) -> None:
        """A ``warn_alloc()`` headline alone (vmalloc's failures), under the same
        ``nopage_rs`` ratelimit; its ``show_mem()`` is not modelled."""
        if self.warn.ratelimit(task):
            self.vmstat.inc("warn_alloc")
            self.warn.pr_warn(task, line)

    # -- freeing ----------------------------------------------------------------------------------
    async def free_pages(self, task: Task, pfn: int, order: int = 0) -> None:
        """``__free_pages``: order 0 to this CPU's pcp list (drain ``batch`` at ``high``),
        higher orders to the buddy lists.

        The page goes to its pageblock's migratetype as it is now: ``free_unref_page_prepare()``
        stores ``get_pfnblock_migratetype()`` as the pcp migratetype, ``__free_pages_ok()``
        reads it for a higher order (and ``free_one_page()`` gets it when 6.0+'s pcp trylock
        fails).
        """
        i = pfn - self._start_pfn
        if order == 0 and 0 <= i < self._nr_pages and ORDER0_MT[self._pstate[i]] < MIGRATE_PCPTYPES:
            mt = self._pbmt[(pfn >> PAGEBLOCK_ORDER) - self._pb_base]
            pcp = self.pcps[task.cpu.id]
            if pcp.count + 1 < pcp.high:
                # free_unref_page() without the drain, so without an await on the way
                if self.pcp_locks is None:
                    self._pcp_free(task, pcp, pfn, mt)
                    return
                brief = self.pcp_trylock_brief(task)
                if brief is not None:
                    self._pcp_free(task, pcp, pfn, mt)
                    brief.free_at_ns = task.cpu.local_ns
                    return
                lock = self.pcp_lock(task, "free_unref_page", self._pcp_trylock)
                if lock is not None:
                    self._pcp_free(task, pcp, pfn, mt)
                    self.locks.release(task, lock)
                    return
                await self.free_one_page(task, pfn, 0, mt, trylock=False)
                return
            await self.free_unref_page(task, pfn, mt, False)
            return
        self.memmap.check_free(self._free_where(task, pfn, order), pfn, order)
        mt = self._buddy.get_pageblock_migratetype(pfn)
        await self.free_one_page(task, pfn, order, mt, trylock=False)

    def free_page_nowait(self, task: Task, pfn: int) -> bool:
        """:meth:`free_pages` ``(pfn, 0)`` when it is a pcp free that cannot sleep: onto this
        CPU's pcp list below ``high``, lock-free or (6.0+, tracing off) under a trylock that
        succeeds. False, with nothing done, otherwise (the caller awaits :meth:`free_pages`).
        Not a kernel interface: the slab's discard after a run-based flood's bulk free."""
        i = pfn - self._start_pfn
        if not 0 <= i < self._nr_pages or ORDER0_MT[self._pstate[i]] >= MIGRATE_PCPTYPES:
            return False
        mt = self._pbmt[(pfn >> PAGEBLOCK_ORDER) - self._pb_base]
        pcp = self.pcps[task.cpu.id]
        if pcp.count + 1 >= pcp.high:
            return False
        if self.pcp_locks is None:
            self._pcp_free(task, pcp, pfn, mt)
            return True
        lock = self.pcp_trylock_brief(task)
        if lock is None:
            return False
        cpu = task.cpu
        # _pcp_free(), inline (tracing is off here)
        self._pstate[i] = PS_FREE
        pcp.lists[mt].appendleft(pfn)
        pcp.count += 1
        cpu.local_ns += self.cost.pcp_free_ns
        vc = self._vmstat_counts
        vc["pgfree"] = vc.get("pgfree", 0) + 1
        lock.free_at_ns = cpu.local_ns
        return True

    async def free_pages_each(self, task: Task, pfns: Sequence[int]) -> None:
        """``free_pages(pfn, 0)`` for each of ``pfns`` in order. Not a kernel interface: the
        counterpart of :meth:`alloc_pages_each`, where a free onto an unlocked pcp list that
        needs no drain runs in this frame and every other one is :meth:`free_pages` itself."""
        start = self._start_pfn
        nr = self._nr_pages
        pstate = self._pstate
        pbmt = self._pbmt
        pb_base = self._pb_base
        for pfn in pfns:
            i = pfn - start
            if self.pcp_locks is None and 0 <= i < nr:
                pcp = self.pcps[task.cpu.id]
                if ORDER0_MT[pstate[i]] < MIGRATE_PCPTYPES and pcp.count + 1 < pcp.high:
                    self._pcp_free(task, pcp, pfn, pbmt[(pfn >> PAGEBLOCK_ORDER) - pb_base])
                    continue
            await self.free_pages(task, pfn, 0)

    async def free_pages_nolock(self, task: Task, pfn: int, order: int = 0) -> None:
        """``free_pages_nolock()`` (v6.15): like :meth:`free_pages` with trylocks only.

        When the pcp list is over ``high`` and ``zone->lock`` is busy, the drain is skipped
        and the pages stay on the pcp list; higher orders whose trylock fails are parked and
        freed by the next locked free (the kernel's per-zone llist, ``FPI_TRYLOCK``).
        """
        self.memmap.check_free(self._free_where(task, pfn, order), pfn, order)
        mt = self._buddy.get_pageblock_migratetype(pfn)
        if order == 0:
            await self.free_unref_page(task, pfn, mt, True)
            return
        await self.free_one_page(task, pfn, order, mt, trylock=True)

    async def free_unref_page(self, task: Task, pfn: int, mt: int, trylock: bool) -> None:
        """``free_unref_page``: :meth:`free_unref_page_commit` under the pcp protection.

        None on 5.8 !RT; the ``pa_lock``/``pagesets`` local_lock otherwise before 6.0; from 6.0
        a ``pcp_spin_trylock()``, and when it fails the page goes to the buddy lists under
        ``zone->lock`` instead (``free_one_page``), as it does for ``free_pages_nolock()``.
        """
        if self.pcp_locks is None:
            await self.free_unref_page_commit(task, pfn, mt, trylock)
            return
        lock = self.pcp_lock(task, "free_unref_page", self._pcp_trylock or trylock)
        if lock is None:
            await self.free_one_page(task, pfn, 0, mt, trylock=trylock)
            return
        await self.free_unref_page_commit(task, pfn, mt, trylock)
        self.locks.release(task, lock)

    async def free_unref_page_commit(self, task: Task, pfn: int, mt: int, trylock: bool) -> None:
        """``free_unref_page_commit``: onto this CPU's pcp list, ``batch`` back at ``high``.

        The caller holds the pcp protection (:meth:`free_unref_page`).
        """
        pcp = self.pcps[task.cpu.id]
        self._pcp_free(task, pcp, pfn, mt)
        if pcp.count >= pcp.high:
            await self.free_pcppages_bulk(task, pcp, pcp.batch, trylock)

    def _pcp_free(self, task: Task, pcp: PerCpuPages, pfn: int, mt: int) -> None:
        """``free_unref_page_commit()`` up to the ``high`` test: the page onto the list head."""
        self._pstate[pfn - self._start_pfn] = PS_FREE
        pcp.lists[mt].appendleft(pfn)
        pcp.count += 1
        task.cpu.local_ns += self.cost.pcp_free_ns  # task.charge(), inline
        vc = self._vmstat_counts
        vc["pgfree"] = vc.get("pgfree", 0) + 1
        if self.tp.mm_page_free:
            self._trace_free(task, pfn, 0)

    @staticmethod
    def _free_where(task: Task, pfn: int, order: int) -> str:
        return f"__free_pages(pfn=0x{pfn:x}, order={order}) from {task.comm}/{task.pid}"

    def _trace_free(self, task: Task, pfn: int, order: int) -> None:
        self.kernel.trace(
            task,
            "mm_page_free",
            f"page={page_struct(pfn):016x} pfn=0x{pfn:x} order={order}",
        )

    async def free_one_page(
        self, task: Task, pfn: int, order: int, mt: int, *, trylock: bool
    ) -> None:
        """``free_one_page``: a block straight back to the buddy lists, onto ``mt`` (the
        pageblock's migratetype its caller read).

        A block whose trylock failed is parked on the zone's list (v6.15 ``FPI_TRYLOCK``'s
        ``add_page_to_zone_llist()``) and freed by the next holder of ``zone->lock``, which
        reads its pageblock's migratetype then (``split_large_buddy()``).
        """
        self.memmap.set_blocks(((pfn, order),), PS_FREE)
        self.vmstat.inc("pgfree", 1 << order)
        if self.tp.mm_page_free:
            self._trace_free(task, pfn, order)
        lock = await self.lock_zone(task, "free_one_page", trylock)
        if lock is None:
            # Parked: the next holder of zone->lock frees it (zone llist).
            self._parked.append((pfn, order))
            return
        buddy = self.zone.buddy
        self._free_parked(buddy)
        buddy.free(pfn, order, mt)
        task.charge(self.spin_lock_cost + self.cost.buddy_free_page_ns)
        self.locks.release(task, lock)

    def _free_parked(self, buddy: BuddyAllocator) -> None:
        """The parked blocks back to the buddy lists, each to its pageblock's migratetype
        (caller holds ``zone->lock``)."""
        parked = self._parked
        if parked:
            self._parked = []
            for pfn, order in parked:
                buddy.free(pfn, order, buddy.get_pageblock_migratetype(pfn))

    async def free_pcppages_bulk(
        self, task: Task, pcp: PerCpuPages, count: int, trylock: bool
    ) -> int:
        """``free_pcppages_bulk``: ``count`` pages from the pcp lists back under ``zone->lock``.

        Each page goes to the buddy list of its pcp migratetype (``get_pcppage_migratetype()``:
        the pcp list it sits on, which is its pageblock's migratetype when it was freed, or the
        requested one when ``rmqueue_bulk()`` put it there), not its pageblock's now.
        """
        lock = await self.lock_zone(task, "free_pcppages_bulk", trylock)
        if lock is None:
            return 0
        pages = pcp.take_for_drain(count)
        buddy = self.zone.buddy
        self._free_parked(buddy)
        buddy.free_bulk(pages)
        task.charge(self.spin_lock_cost + len(pages) * self.cost.buddy_free_page_ns)
        self.locks.release(task, lock)
        self.vmstat.inc("pcp_drain")
        return len(pages)

    async def drain_local_pages(self, task: Task) -> int:
        """``drain_local_pages``: every page of this CPU's pcp lists back to the buddy lists,
        under the pcp protection."""
        pcp = self.pcps[task.cpu.id]
        if not pcp.count:
            return 0
        if self.pcp_locks is None:
            return await self.free_pcppages_bulk(task, pcp, pcp.count, False)
        # drain_pages_zone(): the local_lock before 6.0, spin_lock(&pcp->lock) from 6.0.
        lock = self.pcp_lock(task, "drain_pages_zone", False)
        assert lock is not None
        n = await self.free_pcppages_bulk(task, pcp, pcp.count, False)
        self.locks.release(task, lock)
        return n

    def release_reclaimed(self, blocks: Sequence[tuple[int, int]]) -> None:
        """Reclaimed "other users" blocks back to the buddy lists, each to its pageblock's
        migratetype as ``__free_pages_ok()`` reads it (caller holds zone->lock)."""
        self.memmap.set_blocks(blocks, PS_FREE)
        buddy = self.zone.buddy
        for pfn, order in blocks:
            buddy.free(pfn, order, buddy.get_pageblock_migratetype(pfn))

    # -- convenience ------------------------------------------------------------------------------
    async def get_free_page(self, task: Task, gfp: int) -> int | None:
        """``__get_free_page(gfp)``: a direct-map address, or None."""
        flags = gfp & ~_GFP_HIGHMEM
        # a pcp hit that cannot sleep takes no coroutine (kvfree_rcu's block pages)
        pfn = self.alloc_page_nowait(task, flags)
        if pfn is None:
            pfn = await self.alloc_pages(task, flags, 0)
        return None if pfn is None else PAGE_OFFSET + (pfn << self._page_shift)

    async def free_page(self, task: Task, addr: int) -> None:
        """``free_page(addr)`` for an address from :meth:`get_free_page` (or a block source)."""
        if addr & ((1 << self._page_shift) - 1):
            raise MemoryDebugError(
                f"BUG: Bad page state: free_page({addr:#x}) from {task.comm}/{task.pid}: "
                "not the start of a page"
            )
        await self.free_pages(task, self.memmap.virt_to_pfn(addr), 0)

    def alloc_pages_early(self, order: int = 0, mt: int = MIGRATE_UNMOVABLE) -> int | None:
        """A boot-time (memblock-like) allocation: no task, no cost, no locks, no watermarks.

        For reserves set up before the simulation runs, such as a mempool's pages. Do not call
        it from a running task: it touches the zone without synchronising.
        """
        buddy = self.zone.buddy
        pfn = buddy.rmqueue(order, mt)
        buddy.extfrag.clear()  # no task, no trace and no boost before the simulation runs
        if pfn is None:
            return None
        self.memmap.set_allocated(pfn, order, mt)
        self.vmstat.inc("pgalloc_normal", 1 << order)
        return pfn

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
