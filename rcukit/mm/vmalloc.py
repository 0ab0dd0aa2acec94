"""vmalloc, vfree, and the ``vfree_bulk()`` the 2020 RFC left as "TBD: vmalloc_bulk()".

Addresses come from the x86-64 vmalloc range (``VMALLOC_START``), so ``is_vmalloc_addr`` tells
them from direct-map (kmalloc, page) pointers the way ``kvfree()`` does. Each area is backed by
order-0 pages from the page allocator (``GFP_KERNEL|__GFP_NOWARN``, as
``__vmalloc_area_node``) and followed by a guard page; virtual space is handed out upwards and
never reused (32 TiB outlasts any simulation).

``vfree`` (kernel.md 4) may sleep outside interrupts, so it is a ``might_sleep()`` point; from
(soft)irq context it defers to a worker like ``vfree_atomic``. The TLB flush is lazy: freed
areas accumulate until ``lazy_max_pages`` and are purged in one go, which is why the per-call
``vfree_ns`` is an amortised figure.

``vfree_bulk(ptrs)`` (rcukit's design for the RFC's TBD): what a batch can share is paid once.
One ``might_sleep()`` check, one ``vmap_area_lock`` round trip to unlink every area from the busy
tree, one lazy-purge accounting step (so at most one purge/TLB flush per batch). The cost is one
``vfree_ns`` for the first area plus ``vfree_bulk_per_area_ns`` for each further one, and every
pointer is validated before any area is touched, so a bad pointer leaves the batch intact.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sortedcontainers import SortedDict

from rcukit.errors import PageAllocError, SimulationError
from rcukit.locking.locks import LockKind
from rcukit.mm.fault import FreedObject, RawSite, Site, caller_site, memory_error, raw_site
from rcukit.mm.gfp import GFP, GFP_KERNEL, format_gfp
from rcukit.sched.sim import Task
from rcukit.wq import Work

if TYPE_CHECKING:
    from rcukit.mm.mm import Mm

#: x86-64 (4-level paging) vmalloc range: 32 TiB from ``VMALLOC_START``.
VMALLOC_START = 0xFFFFC90000000000
VMALLOC_END = 0xFFFFE90000000000
#: Backing-page mask of ``__vmalloc_area_node`` for a plain ``vmalloc()``.
VMALLOC_PAGE_GFP = int(GFP_KERNEL | GFP.NOWARN)
#: ``vmalloc()``'s own mask, the one its failure report prints.
_VMALLOC_GFP = int(GFP_KERNEL)
_VMALLOC_GFP_NAME = format_gfp(_VMALLOC_GFP)


def is_vmalloc_addr(ptr: int) -> bool:
    """``is_vmalloc_addr()``: inside ``[VMALLOC_START, VMALLOC_END)``."""
    return VMALLOC_START <= ptr < VMALLOC_END


class VmArea:
    """A live ``vm_struct``: start, size in pages, backing PFNs and (if recorded) its site."""

    __slots__ = ("addr", "alloc_site", "nr_pages", "pages", "size")

    def __init__(self, addr: int, size: int, pages: list[int], alloc_site: RawSite | None) -> None:
        self.addr = addr
        self.size = size
        self.nr_pages = len(pages)
        self.pages = pages
        self.alloc_site = alloc_site


class VmallocAllocator:
    """The vmalloc space of one kernel (``kernel.mm.vmalloc``)."""

    def __init__(self, mm: Mm) -> None:
        self.mm = mm
        self.page_size = mm.page_size
        #: ``vmap_area_lock`` guards the busy tree (a ``spinlock_t``).
        self.lock = mm.kernel.new_lock("vmap_area_lock", LockKind.SPINLOCK)
        self._next = VMALLOC_START
        self._areas: SortedDict = SortedDict()
        mmc = mm.config
        self._freed: SortedDict = SortedDict()
        self._freed_order: deque[int] = deque()
        self._quarantine_cap = mmc.debug_quarantine
        self._record_alloc = mmc.debug_alloc_sites
        #: ``lazy_max_pages()``: 32 MiB worth of pages times log2(CPUs) (mm/vmalloc.c).
        nr_cpus = mm.kernel.config.nr_cpus
        self.lazy_max_pages = (32 << 20) // self.page_size * max(1, nr_cpus.bit_length())
        self.lazy_nr = 0
        self.purges = 0
        self.nr_areas = 0
        self._deferred: list[list[int]] = [[] for _ in range(nr_cpus)]
        self._deferred_work = [
            Work(f"free_work/{cpu}", self._free_work) for cpu in range(nr_cpus)
        ]

    def _site(self, task: Task | None) -> Site:
        return caller_site(task, self.mm.kernel.now_ns)

    # -- vmalloc ----------------------------------------------------------------------------------
    async def vmalloc(self, task: Task, size: int) -> int:
        """``vmalloc(size)``: a vmalloc-range pointer, or 0 (NULL) if pages ran out."""
        if size < 0:
            raise PageAllocError(f"vmalloc size {size} is invalid: must be >= 0")
        if size == 0:
            return 0
        mm = self.mm
        mm.locks.might_sleep(task, "vmalloc")
        nr_pages = -(-size // self.page_size)
        pages: list[int] = []
        for _ in range(nr_pages):
            pfn = await mm.alloc_pages(task, VMALLOC_PAGE_GFP, 0)
            if pfn is None:
                for p in pages:
                    await mm.free_pages(task, p, 0)
                # __vmalloc_area_node()'s fail: warn_alloc() with vmalloc's own mask;
                # area->size counts the guard page.
                mm.warn(
                    task,
                    f"{task.comm}: vmalloc: allocation failure, allocated "
                    f"{len(pages) * self.page_size} of {(nr_pages + 1) * self.page_size} bytes, "
                    f"mode:{_VMALLOC_GFP:#x}({_VMALLOC_GFP_NAME}), nodemask=(null)",
                )
                return 0
            pages.append(pfn)
        await task.sync()
        mm.locks.acquire(task, self.lock, "alloc_vmap_area")
        addr = self._next
        end = addr + (nr_pages + 1) * self.page_size  # + guard page
        if end > VMALLOC_END:
            mm.locks.release(task, self.lock)
            raise SimulationError("the simulated vmalloc space (32 TiB) is exhausted")
        self._next = end
        task.charge(mm.spin_lock_cost + mm.cost.vmalloc_ns)
        mm.locks.release(task, self.lock)
        self._areas[addr] = VmArea(
            addr, size, pages, raw_site(task) if self._record_alloc else None
        )
        self.nr_areas += 1
        mm.vmstat.inc("nr_vmalloc_pages", nr_pages)
        return addr

    # -- validation -------------------------------------------------------------------------------
    def _area_for_free(self, task: Task | None, ptr: int, where: str) -> VmArea:
        area: VmArea | None = self._areas.get(ptr)
        if area is not None:
            return area
        mm = self.mm
        if not is_vmalloc_addr(ptr):
            is_slab = mm.slab.is_slab_object(ptr)
            raise memory_error(
                "invalid-free",
                ptr,
                where=where,
                site=self._site(task),
                alloc_site=mm.slab.alloc_site(ptr),
                detail=(
                    "a kmalloc pointer passed to vfree (use kfree or kvfree)"
                    if is_slab
                    else "not a vmalloc address"
                ),
                show_alloc=is_slab,
                show_free=False,
            )
        freed = self._freed.get(ptr)
        if freed is not None:
            raise memory_error(
                "double-free",
                ptr,
                where=where,
                site=self._site(task),
                alloc_site=freed.alloc_site,
                free_site=freed.free_site,
                detail=f"vmalloc area of {freed.size} bytes",
            )
        raise memory_error(
            "invalid-free",
            ptr,
            where=where,
            site=self._site(task),
            detail="Trying to vfree() nonexistent vm area (never returned by vmalloc, or freed "
            "longer ago than the quarantine remembers)",
            show_alloc=False,
            show_free=False,
        )

    def _remember(self, area: VmArea, site: Site) -> None:
        if not self._quarantine_cap:
            return
        self._freed[area.addr] = FreedObject(site, Site.of(area.alloc_site), area.size)
        self._freed_order.append(area.addr)
        if len(self._freed_order) > self._quarantine_cap:
            del self._freed[self._freed_order.popleft()]

    # -- vfree ------------------------------------------------------------------------------------
    async def vfree(self, task: Task, ptr: int) -> None:
        """``vfree(ptr)``: may sleep; deferred to a worker from interrupt context."""
        if ptr == 0:
            return
        if task.in_hardirq or task.in_softirq:
            self._area_for_free(task, ptr, "vfree_atomic")
            self._defer(task, [ptr])
            return
        mm = self.mm
        mm.locks.might_sleep(task, "vfree")
        area = self._area_for_free(task, ptr, "vfree")
        await self._unlink(task, [area])
        task.charge(mm.cost.vfree_ns)
        await self._release(task, [area], self._site(task))

    async def vfree_bulk(self, task: Task, ptrs: Sequence[int]) -> None:
        """Free a batch of vmalloc areas paying the lock, the check and the purge once.

        NULLs are skipped. Every pointer is validated first (a repeat in the batch is a double
        free); then one ``vmap_area_lock`` section unlinks them all.
        """
        live = [p for p in ptrs if p]
        if not live:
            return
        if task.in_hardirq or task.in_softirq:
            self._validate(task, live, "vfree_atomic")
            self._defer(task, live)
            return
        mm = self.mm
        mm.locks.might_sleep(task, "vfree_bulk")
        areas = self._validate(task, live, "vfree_bulk")
        await self._unlink(task, areas)
        cost = mm.cost
        task.charge(cost.vfree_ns + (len(areas) - 1) * cost.vfree_bulk_per_area_ns)
        mm.vmstat.inc("vfree_bulk")
        await self._release(task, areas, self._site(task))

    def _validate(self, task: Task, ptrs: Sequence[int], where: str) -> list[VmArea]:
        areas: list[VmArea] = []
        seen: set[int] = set()
        for p in ptrs:
            if p in seen:
                area = self._areas[p]
                raise memory_error(
                    "double-free",
                    p,
                    where=where,
                    site=self._site(task),
                    alloc_site=Site.of(area.alloc_site),
                    detail="the same vmalloc pointer appears twice in one batch",
                    show_free=False,
                )
            areas.append(self._area_for_free(task, p, where))
            seen.add(p)
        return areas

    async def _unlink(self, task: Task, areas: list[VmArea]) -> None:
        """One ``vmap_area_lock`` section for the whole list, then the lazy-purge accounting."""
        mm = self.mm
        await task.sync()
        mm.locks.acquire(task, self.lock, "remove_vm_area")
        task.charge(mm.spin_lock_cost)
        pages = 0
        for area in areas:
            del self._areas[area.addr]
            pages += area.nr_pages
        mm.locks.release(task, self.lock)
        self.nr_areas -= len(areas)
        self.lazy_nr += pages
        if self.lazy_nr > self.lazy_max_pages:
            self.lazy_nr = 0
            self.purges += 1
            mm.vmstat.inc("vmap_lazy_purge")

    async def _release(self, task: Task, areas: list[VmArea], site: Site) -> None:
        mm = self.mm
        for area in areas:
            self._remember(area, site)
            mm.vmstat.inc("nr_vmalloc_pages", -area.nr_pages)
            for pfn in area.pages:
                await mm.free_pages(task, pfn, 0)

    def _defer(self, task: Task, ptrs: list[int]) -> None:
        """``vfree_atomic``: llist_add to this CPU's deferred list and schedule its work."""
        cpu = task.cpu.id
        self._deferred[cpu].extend(ptrs)
        self.mm.kernel.system_wq.queue_work(task, self._deferred_work[cpu], cpu)

    async def _free_work(self, task: Task, work: Work) -> None:
        cpu = task.cpu.id
        batch, self._deferred[cpu] = self._deferred[cpu], []
        live = [p for p in batch if p in self._areas]
        if live:
            await self.vfree_bulk(task, live)

    # -- queries -------------------------------------------------------------------------------
    def alloc_site(self, ptr: int) -> Site | None:
        """Allocation site of the live or remembered area containing ``ptr`` (if recorded)."""
        area = self._containing(self._areas, ptr)
        if isinstance(area, VmArea):
            return Site.of(area.alloc_site)
        freed = self._containing(self._freed, ptr)
        return freed.alloc_site if isinstance(freed, FreedObject) else None

    def area_size(self, ptr: int) -> int:
        """``get_vm_area_size()``: mapped bytes of the live area starting at ``ptr`` (no guard)."""
        area: VmArea | None = self._areas.get(ptr)
        if area is None:
            self._area_for_free(None, ptr, "area_size")
            raise AssertionError("unreachable")  # pragma: no cover
        return area.nr_pages * self.page_size

    @staticmethod
    def _containing(d: SortedDict, ptr: int) -> object | None:
        i = d.bisect_right(ptr) - 1
        if i < 0:
            return None
        found: object = d.peekitem(i)[1]
        return found

    def check_access(self, ptr: int, task: Task | None = None) -> None:
        """KASAN for vmalloc memory: raise on use after vfree or a wild vmalloc address."""
        area = self._containing(self._areas, ptr)
        if isinstance(area, VmArea) and ptr < area.addr + area.nr_pages * self.page_size:
            return
        freed = self._containing(self._freed, ptr)
        start = self._freed.peekitem(self._freed.bisect_right(ptr) - 1)[0] if freed else 0
        if isinstance(freed, FreedObject) and ptr < start + max(freed.size, 1):
            raise memory_error(
                "use-after-free",
                ptr,
                where="check_access",
                site=self._site(task),
                alloc_site=freed.alloc_site,
                free_site=freed.free_site,
                detail=f"inside the vfree()d area {start:#x} of {freed.size} bytes",
            )
        raise memory_error(
            "vmalloc-out-of-bounds" if isinstance(area, VmArea) else "wild-memory-access",
            ptr,
            where="check_access",
            site=self._site(task),
            detail="not inside any live vmalloc area",
            show_alloc=False,
            show_free=False,
        )
