"""``kernel.mm``: the memory-management subsystem of one simulated kernel, composed of its parts.

The kernel has no "mm object": mm/ is sets of functions over their own structures. This facade
is the one place that builds those structures in boot order (``mm_core_init()``: the zone and
its memory map, kswapd's node state, the pcp lists, then slab and vmalloc) and hands each part
the others it reads. Each part is typed and reachable by its kernel name:

* ``zone`` (:class:`~rcukit.mm.zone.Zone`): buddy lists, watermarks, ``zone->lock``;
* ``memmap`` (:class:`~rcukit.mm.memmap.MemMap`): page states and direct-map addresses;
* ``page_alloc`` (:class:`~rcukit.mm.page_alloc.PageAlloc`): mm/page_alloc.c's paths;
* ``kswapd`` (:class:`~rcukit.mm.kswapd.Kswapd`): reclaim and shrinkers (mm/vmscan.c);
* ``slab`` and ``vmap``: mm/slub.c and mm/vmalloc.c;
* ``fault``: ``fail_page_alloc`` and ``failslab``.

Callers keep the kernel's flat vocabulary (``kernel.mm.kmalloc``, ``kernel.mm.alloc_pages``,
``kernel.mm.register_shrinker``): those names are the parts' bound methods, stored once here,
so a call costs what a call on the part costs (the hot paths are per-object).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from rcukit.errors import ConfigError, SimulationError
from rcukit.locking.locks import LockKind
from rcukit.mm.background import BackgroundLoad
from rcukit.mm.fault import FaultInjection, caller_site, memory_error
from rcukit.mm.gfp import MIGRATE_MOVABLE, MIGRATE_UNMOVABLE
from rcukit.mm.kswapd import Kswapd
from rcukit.mm.memmap import PAGE_OFFSET, PS_OTHER, ZONE_NORMAL_START_PFN, MemMap
from rcukit.mm.page_alloc import PageAlloc
from rcukit.mm.slab import SlabAllocator
from rcukit.mm.vmalloc import VMALLOC_END, VMALLOC_START, VmallocAllocator
from rcukit.mm.zone import MAX_ORDER, PerCpuPages, Zone
from rcukit.sched.sim import Task, WaitQueue

if TYPE_CHECKING:
    from rcukit.machine import Machine


def _aligned_blocks(start: int, end: int) -> list[tuple[int, int]]:
    """``[start, end)`` as naturally aligned ``(pfn, order)`` blocks, in address order."""
    out: list[tuple[int, int]] = []
    while start < end:
        order = (start & -start).bit_length() - 1 if start else MAX_ORDER - 1
        order = min(order, MAX_ORDER - 1)
        while start + (1 << order) > end:
            order -= 1
        out.append((start, order))
        start += 1 << order
    return out


class Mm:
    """``kernel.mm``: zone, memory map, page allocator, kswapd, slab, vmalloc, fault injection."""

    def __init__(self, kernel: Machine) -> None:
        self.kernel = kernel
        cfg = kernel.config
        mmc = cfg.mm
        self.config = mmc
        self.cost = cfg.cost
        self.locks = kernel.locks
        self.vmstat = kernel.vmstat
        self.tracer = kernel.tracer
        #: The tracepoints' static keys (``tp.kmalloc``...): one load at a call site.
        self.tp = kernel.tracer.tp
        self.page_size = cfg.page_size
        self.page_shift = cfg.page_size.bit_length() - 1
        self.page_offset = PAGE_OFFSET
        #: A ``spinlock_t`` round trip (rt_mutex based on PREEMPT_RT).
        self.spin_lock_cost = cfg.cost.spin_lock_ns + (
            cfg.cost.rt_spin_lock_extra_ns if cfg.preempt_rt else 0
        )

        nr = mmc.zone_pages
        self.zone = Zone.setup(
            ZONE_NORMAL_START_PFN,
            nr,
            kernel.new_lock("&zone->lock", LockKind.SPINLOCK),
            page_size=cfg.page_size,
            min_free_kbytes=mmc.min_free_kbytes,
            watermark_scale_factor=mmc.watermark_scale_factor,
            watermark_boost_factor=mmc.watermark_boost_factor,
        )
        #: ``zone->lock`` (a ``spinlock_t``), the lock the RFC is about.
        self.zone_lock = self.zone.lock
        self.memmap = memmap = MemMap(ZONE_NORMAL_START_PFN, nr, cfg.page_size)
        self.kswapd = kswapd = Kswapd(self)
        self._reserve_other_users(
            nr, mmc.initial_free_pages, mmc.initial_used_fraction, mmc.initial_free_max_order
        )
        self._seed = kernel.rng.getrandbits(64)
        self.fault = FaultInjection.from_config(mmc, self._seed)
        #: ``/sys/kernel/debug/fail_page_alloc``.
        self.fail_page_alloc = self.fault.fail_page_alloc
        #: ``/sys/kernel/debug/failslab``.
        self.failslab = self.fault.failslab
        self.page_alloc = pa = PageAlloc(self)
        #: Per-CPU ``struct per_cpu_pages``, indexed by CPU id (also in ``cpu.data["pcp"]``).
        self.pcps: list[PerCpuPages] = pa.pcps
        self.background: BackgroundLoad | None = None
        self.slab = slab = SlabAllocator(self)
        #: The vmalloc space (``VmallocAllocator``); ``vmalloc`` itself is bound below.
        self.vmap = vmap = VmallocAllocator(self)

        # The kernel's flat names, bound once (see the module docstring).
        self.alloc_pages = pa.alloc_pages
        self.alloc_pages_nolock = pa.alloc_pages_nolock
        self.free_pages = pa.free_pages
        self.free_pages_nolock = pa.free_pages_nolock
        self.get_free_page = pa.get_free_page
        self.free_page = pa.free_page
        self.drain_local_pages = pa.drain_local_pages
        self.nr_free_pages = pa.nr_free_pages
        self.gfp_name = pa.gfp_name
        self.warn = pa.warn_alloc
        self.page_address: Callable[[int], int] = memmap.page_address
        self.virt_to_pfn = memmap.virt_to_pfn
        self.is_direct_map_addr = memmap.is_direct_map_addr
        self.is_vmalloc_addr = memmap.is_vmalloc_addr
        self.page_struct = memmap.page_struct
        self.page_state = memmap.page_state
        self.describe_page = memmap.describe_page
        self.mark_slab = memmap.mark_slab
        self.register_shrinker = kswapd.register_shrinker
        self.unregister_shrinker = kswapd.unregister_shrinker
        self.kmalloc = slab.kmalloc
        self.kfree = slab.kfree
        self.kfree_bulk = slab.kfree_bulk
        self.ksize = slab.ksize
        self.vmalloc = vmap.vmalloc
        self.vfree = vmap.vfree
        self.vfree_bulk = vmap.vfree_bulk

    def _reserve_other_users(
        self, nr: int, free_pages: int | None, used_fraction: float, free_max_order: int
    ) -> None:
        """Hand the boot-time share of the zone to "other users" (what reclaim takes back)."""
        if free_pages is None:
            used = int(nr * used_fraction)
        else:
            if free_pages > nr:
                raise ConfigError(
                    f"mm.initial_free_pages = {free_pages} exceeds mm.zone_pages = {nr}"
                )
            used = nr - free_pages
        if free_max_order >= MAX_ORDER - 1:
            blocks = self.zone.buddy.reserve(used, MIGRATE_MOVABLE)
        else:
            blocks = self._scatter_free(nr - used, free_max_order)
        self.memmap.set_blocks(blocks, PS_OTHER)
        pool = self.kswapd.pool
        for pfn, order in blocks:
            pool.add(pfn, order)

    def _scatter_free(self, free: int, order: int) -> list[tuple[int, int]]:
        """Leave ``free`` pages free in blocks of at most 2^``order`` pages, spread over the
        zone so that no two are buddies (they cannot merge); return the other users' blocks.

        Every other 2^order piece is a candidate (its buddy stays in use), chosen evenly
        spaced; a remainder below a piece is freed from the start of one more candidate.
        """
        buddy = self.zone.buddy
        size = 1 << order
        pieces: list[tuple[int, int]] = []
        for pfn, o in buddy.reserve(buddy.nr_free, MIGRATE_MOVABLE):
            if o <= order:
                pieces.append((pfn, o))
            else:
                pieces.extend((p, order) for p in range(pfn, pfn + (1 << o), size))
        candidates = [pfn for pfn, o in pieces if o == order and not (pfn >> order) & 1]
        whole, rest = divmod(free, size)
        n = whole + (1 if rest else 0)
        if n > len(candidates):
            raise ConfigError(
                f"mm.initial_free_max_order = {order} keeps free blocks apart, so at most "
                f"{len(candidates) * size} of mm.zone_pages = {buddy.nr_pages} can be free "
                f"at boot; {free} were asked for (mm.initial_free_pages or "
                "mm.initial_used_fraction)"
            )
        chosen = [candidates[j * len(candidates) // n] for j in range(n)]
        taken = set(chosen)
        used = [(pfn, o) for pfn, o in pieces if pfn not in taken]
        for i, pfn in enumerate(chosen):
            keep = size if i < whole else rest
            for p, o in _aligned_blocks(pfn, pfn + keep):
                buddy.free(p, o, MIGRATE_MOVABLE)
            used.extend(_aligned_blocks(pfn + keep, pfn + size))
        return used

    def start(self) -> None:
        """Boot: spawn kswapd0 on the last CPU and, if configured, the background load."""
        sim = self.kernel.sim
        last = len(sim.cpus) - 1
        self.kswapd.task = sim.spawn(self.kswapd.main, last, "kswapd0", workload=False)
        if self.config.background_allocs_per_ms > 0:
            self.background = BackgroundLoad(self, self._seed)
            self.background.start()

    # -- state owned by the parts, read where callers always read it -------------------------
    @property
    def kswapd_wait(self) -> WaitQueue:
        """``pgdat->kswapd_wait``."""
        return self.kswapd.wait

    @property
    def failures_by_gfp(self) -> dict[str, int]:
        """Allocation failures keyed by the failing mask as ``format_gfp`` prints it."""
        return self.page_alloc.failures_by_gfp

    @property
    def warnings(self) -> list[str]:
        """``warn_alloc`` lines (ratelimited like the kernel's), oldest first."""
        return self.page_alloc.warnings

    def pcp(self, cpu: int) -> PerCpuPages:
        return self.pcps[cpu]

    def alloc_pages_early(self, order: int = 0, mt: int = MIGRATE_UNMOVABLE) -> int | None:
        """A boot-time page for reserves (mempools, kvfree_rcu's cache): no task, no locks."""
        return self.page_alloc.alloc_pages_early(order, mt)

    # -- mm/util.c and KASAN -------------------------------------------------------------------
    async def kvfree(self, task: Task, ptr: int) -> None:
        """``kvfree(ptr)``: vfree for vmalloc addresses, kfree otherwise."""
        if VMALLOC_START <= ptr < VMALLOC_END:
            await self.vmap.vfree(task, ptr)
        else:
            await self.slab.kfree(task, ptr)

    def check_access(self, ptr: int, task: Task | None = None) -> None:
        """KASAN-style access check of any pointer: raises MemoryDebugError on use after free."""
        if VMALLOC_START <= ptr < VMALLOC_END:
            self.vmap.check_access(ptr, task)
        else:
            self.slab.check_access(ptr, task)

    def check_page_access(self, addr: int, task: Task | None = None) -> None:
        """Use-after-free check for a non-slab direct-map address (page granularity)."""
        pfn = (addr - PAGE_OFFSET) >> self.page_shift
        state = self.memmap.page_state(pfn)
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

    def check(self) -> None:
        """Consistency check of buddy lists, pcp lists and page states (for tests)."""
        self.page_alloc.check()
        if self.memmap.pstate.count(PS_OTHER) != self.kswapd.pool.nr_pages:
            raise SimulationError("other-users pages and the reclaimable pool disagree")
