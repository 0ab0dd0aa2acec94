"""The pluggable allocator core: "get one page for a kvfree_rcu block from this CPU, now".

kvfree_rcu() needs a fresh pointer block while it holds ``krcp->lock`` (a ``raw_spinlock_t``,
IRQs off). Every proposal of the 2020 thread and every later kernel answer is one way to get
that page (kernel.md 2.1-2.4, ``reference/rfc-gfp-fast-try.txt``); rcukit runs them side by side,
so each is a small :class:`BlockPageSource` the kvfree_rcu engine calls in the caller's context.
Whether it splats, fails or wakes kswapd is not decided here: the page allocator models the
locks each GFP mask really takes, so the differences come out of the model.

Built-ins (selectable by name in ``KernelConfig.kvfree.variant``; a :class:`BlockSources`
registry per kernel resolves the name when kvfree_rcu is constructed):

============= =================================================================================
fast-try      ``GFP_NOWAIT|__GFP_NOWARN|__GFP_FAST_TRY``: pcp lists only (the RFC's patch).
nowait        ``GFP_NOWAIT|__GFP_NOWARN``: pcp, then a ``zone->lock`` refill; the slow path wakes
              kswapd (the v5.9 code the RFC starts from).
gfp-zero      ``0``: Wilcox's ``__get_free_page(0)`` literally: no ``__GFP_KSWAPD_RECLAIM`` (the
              slow path wakes no kswapd) and no ``__GFP_NOWARN``, so a failure goes through
              ``warn_alloc()`` -> ``show_mem()`` -> ``show_free_areas()``, which takes
              ``zone->lock`` (kernel.md 8.5, :mod:`rcukit.mm.show_mem`).
raw-zone-lock Wilcox's other proposal in the RFC thread, **never merged**: "On non-RT, we could
              make that lock a raw spinlock. On RT, we could decline to take the lock", behind a
              ``zone_lock(zone)`` helper. ``GFP_NOWAIT|__GFP_NOWARN`` (nowait's path); on !RT the
              machine's ``zone->lock`` is a ``raw_spinlock_t`` from boot; on RT this allocation
              declines ``zone->lock`` (pcp pages only: an empty pcp list fails).
page-cache    never allocates here: returns None and says so (``defers_to_worker``), so the engine
              arms its page-cache refill worker, which allocates later in a clean context with
              :data:`KVFREE_REFILL_GFP` (v5.11+, kernel.md 2.3).
nolock        ``alloc_pages_nolock()`` (v6.15/6.16): trylocks only, ``__GFP_ZERO`` implied.
============= =================================================================================

Users add their own by passing them to ``rcukit.kernel.boot(config, block_sources=[...])`` (or
``Kernel(config, block_sources=...)``, ``run_compare(..., block_sources=...)``); the kernel's
kvfree_rcu owns the registry (``kernel.kvfree.block_sources``), not the page allocator.
:class:`MempoolSource` is a worked example (a per-CPU reserve refilled by a worker, the
"pre-allocated buffer" Hocko and Gorman asked for).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from rcukit.errors import ConfigError, did_you_mean
from rcukit.locking.locks import LockKind
from rcukit.mm.gfp import (
    GFP,
    GFP_NOWAIT,
    format_gfp,
    validate_gfp,
)
from rcukit.mm.page_alloc import NOLOCK_GFP
from rcukit.rcu.profiles import REFILL_GFP_5_13
from rcukit.sched.sim import Task
from rcukit.wq import Work, WorkFn

if TYPE_CHECKING:
    from rcukit.mm.mm import Mm

#: The v5.13+ page-cache refill mask ``GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN``
#: (0x92cc0, kernel.md 3.1): may sleep and reclaim once, never dips into reserves, never warns.
KVFREE_REFILL_GFP = int(REFILL_GFP_5_13)


@runtime_checkable
class BlockPageSource(Protocol):
    """One way to obtain a block page from the calling CPU's current context.

    ``get_page`` returns a direct-map address (``PAGE_OFFSET + pfn * page_size``) that the
    caller later frees with ``Mm.free_page``, or None. ``gfp`` is the mask the
    source uses, for printing; ``defers_to_worker`` is True for sources that never allocate in
    the caller's context (the engine then schedules its own refill).
    """

    name: str
    gfp: int
    description: str
    defers_to_worker: bool

    async def get_page(self, task: Task, mm: Mm) -> int | None: ...


class GfpPageSource:
    """``__get_free_page(gfp)`` in the caller's context, with whatever locks ``gfp`` implies."""

    defers_to_worker = False

    def __init__(self, name: str, gfp: int, description: str) -> None:
        self.name = name
        self.gfp = int(validate_gfp(gfp))
        self.description = description

    async def get_page(self, task: Task, mm: Mm) -> int | None:
        return await mm.get_free_page(task, self.gfp)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {format_gfp(self.gfp)}>"


@runtime_checkable
class MmBootHook(Protocol):
    """A variant that changes the machine itself, once, when kvfree_rcu is built (before any
    task runs): ``boot_mm(mm)``. Optional; only the raw-zone-lock proposal needs it."""

    def boot_mm(self, mm: Mm) -> None: ...


class RawZoneLockSource:
    """Matthew Wilcox's proposal (RFC thread, 2020-07-31, quoted in the RFC; never merged):
    abstract ``spin_lock(&zone->lock)`` behind ``zone_lock(zone)``; on non-RT make it a raw
    spinlock, on RT decline to take it.

    On !RT :meth:`boot_mm` turns the zone lock into a ``raw_spinlock_t`` for the whole machine
    (every allocation, free, drain and kswapd pass), so taking it under ``krcp->lock`` is a
    legal raw-in-raw nesting; what stays a ``spinlock_t`` on nowait's path (the slow path's
    ``wakeup_kswapd()``, which the RFC itself points out, and the pcp protection of the
    profile's kernel) still counts. On RT the zone lock stays a sleeping lock and this
    allocation declines it: ``PageAlloc.lock_zone`` returns None for the calling task, so an
    empty pcp list fails the allocation (counted in ``zone_lock_declined``).
    """

    name = "raw-zone-lock"
    gfp = int(GFP_NOWAIT | GFP.NOWARN)
    description = (
        "Wilcox's never-merged proposal: zone->lock a raw_spinlock_t on !RT, declined on RT "
        "(pcp only); GFP_NOWAIT|__GFP_NOWARN otherwise"
    )
    defers_to_worker = False

    def boot_mm(self, mm: Mm) -> None:
        """On !RT: ``zone->lock`` becomes a ``raw_spinlock_t`` before anyone has taken it."""
        if mm.kernel.config.preempt_rt:
            return
        lock = mm.zone.lock
        if lock.acquisitions:
            raise ConfigError(
                f"raw-zone-lock: {lock.name} was taken {lock.acquisitions} times before boot "
                "finished; its class can only change before first use"
            )
        lock.kind = LockKind.RAW_SPINLOCK

    async def get_page(self, task: Task, mm: Mm) -> int | None:
        pa = mm.page_alloc
        if not pa.preempt_rt:
            return await mm.get_free_page(task, self.gfp)
        decliners = pa.zone_lock_decliners
        decliners.add(task)
        try:
            return await mm.get_free_page(task, self.gfp)
        finally:
            decliners.discard(task)

    def __repr__(self) -> str:
        return "<RawZoneLockSource raw-zone-lock>"


class PageCacheSource:
    """v5.11+: no allocation under the lock; the engine's worker refills a per-CPU cache."""

    name = "page-cache"
    gfp = KVFREE_REFILL_GFP
    description = (
        "no allocation under krcp->lock; a worker refills a per-CPU page cache with "
        "GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN (v5.11+)"
    )
    defers_to_worker = True

    async def get_page(self, task: Task, mm: Mm) -> int | None:
        return None

    def __repr__(self) -> str:
        return "<PageCacheSource page-cache>"


class NolockSource:
    """``alloc_pages_nolock()``: pcp, then a *trylock* of ``zone->lock``; fails, never splats."""

    name = "nolock"
    gfp = NOLOCK_GFP
    description = (
        "alloc_pages_nolock(): trylock-only pcp/zone access, __GFP_ZERO implied, no reclaim, "
        "no kswapd wake-up (v6.15+)"
    )
    defers_to_worker = False

    async def get_page(self, task: Task, mm: Mm) -> int | None:
        pfn = await mm.alloc_pages_nolock(task, 0)
        return None if pfn is None else mm.page_address(pfn)

    def __repr__(self) -> str:
        return "<NolockSource nolock>"


class MempoolSource:
    """A user variant: per-CPU reserves of ``pages_per_cpu`` pages, refilled by a worker.

    The reserve is taken at construction, as a boot-time ``mempool_create`` would, so the first
    blocks never touch the page allocator. ``get_page`` pops a reserved page (IRQs-off pcp-like
    cost, no lock) and, once the reserve drops below ``pages_per_cpu``, queues this CPU's refill
    work on ``system_highpri_wq``; the worker allocates with ``refill_gfp`` in process context.
    An empty reserve fails (the caller takes its fallback), which is exactly the bound Peter
    Zijlstra pointed out a reserve cannot escape (kernel.md 2.2).
    """

    defers_to_worker = False

    def __init__(
        self,
        mm: Mm,
        pages_per_cpu: int = 8,
        *,
        name: str = "mempool",
        refill_gfp: int = KVFREE_REFILL_GFP,
    ) -> None:
        if pages_per_cpu < 1:
            raise ConfigError(f"mempool pages_per_cpu = {pages_per_cpu}: must be >= 1")
        self.name = name
        self.gfp = int(validate_gfp(refill_gfp))
        self.pages_per_cpu = pages_per_cpu
        self.description = (
            f"per-CPU reserve of {pages_per_cpu} pages, refilled by a worker with "
            f"{format_gfp(self.gfp)}"
        )
        self.pools: list[list[int]] = []
        self._works: list[Work] = []
        self.refills = 0
        for cpu in range(len(mm.pcps)):
            pool: list[int] = []
            for _ in range(pages_per_cpu):
                pfn = mm.alloc_pages_early()
                if pfn is None:
                    raise ConfigError(
                        f"mempool {name!r}: the zone cannot reserve {pages_per_cpu} pages "
                        f"for each of {len(mm.pcps)} CPUs"
                    )
                pool.append(mm.page_address(pfn))
            self.pools.append(pool)
            self._works.append(Work(f"{name}_refill/{cpu}", self._make_refill(mm)))

    def _make_refill(self, mm: Mm) -> WorkFn:
        async def refill(task: Task, work: Work) -> None:
            pool = self.pools[task.cpu.id]
            while len(pool) < self.pages_per_cpu:
                addr = await mm.get_free_page(task, self.gfp)
                if addr is None:
                    break
                pool.append(addr)
                self.refills += 1

        return refill

    async def get_page(self, task: Task, mm: Mm) -> int | None:
        cpu = task.cpu.id
        pool = self.pools[cpu]
        addr = pool.pop() if pool else None
        if addr is not None:
            task.charge(mm.cost.pcp_alloc_ns)
        if len(pool) < self.pages_per_cpu:
            mm.kernel.system_highpri_wq.queue_work(task, self._works[cpu], cpu)
        return addr

    def __repr__(self) -> str:
        return f"<MempoolSource {self.name} {self.pages_per_cpu}/cpu>"


def builtin_variants() -> dict[str, BlockPageSource]:
    """Fresh instances of the six built-ins, keyed by name (one set per kernel)."""
    nowarn = int(GFP.NOWARN)
    sources: list[BlockPageSource] = [
        GfpPageSource(
            "fast-try",
            int(GFP_NOWAIT) | nowarn | int(GFP.FAST_TRY),
            "__GFP_FAST_TRY: per-CPU pcp lists only, never rmqueue_bulk or zone->lock, "
            "no slow path (the RFC)",
        ),
        GfpPageSource(
            "nowait",
            int(GFP_NOWAIT) | nowarn,
            "GFP_NOWAIT|__GFP_NOWARN: pcp, then a zone->lock refill; slow path wakes kswapd "
            "(v5.9 in-lock path)",
        ),
        GfpPageSource(
            "gfp-zero",
            0,
            "__get_free_page(0): no kswapd wake from the slow path, no __GFP_NOWARN: a failure "
            "runs warn_alloc()/show_mem() under zone->lock (Wilcox in the RFC thread)",
        ),
        RawZoneLockSource(),
        PageCacheSource(),
        NolockSource(),
    ]
    return {s.name: s for s in sources}


def check_variant_name(name: str) -> None:
    """Variant names are CLI/config words: non-empty, no spaces or commas."""
    if not name or any(c.isspace() or c == "," for c in name):
        raise ConfigError(
            f"variant name {name!r} is invalid: use a non-empty word without spaces or commas"
        )


class BlockSources:
    """The allocator-core variants one kernel's kvfree_rcu can use: the built-ins, then users'.

    One registry per kernel (built from fresh built-in instances), so nothing is shared between
    simulations. ``KernelConfig.kvfree.variant`` names one of them; :meth:`lookup` resolves it.
    """

    __slots__ = ("_by_name",)

    def __init__(self, extra: Iterable[BlockPageSource] = (), *, replace: bool = False) -> None:
        self._by_name: dict[str, BlockPageSource] = builtin_variants()
        for source in extra:
            self.register(source, replace=replace)

    def register(self, source: BlockPageSource, *, replace: bool = False) -> None:
        """Add a user's variant (or replace one of the same name with ``replace=True``)."""
        if not isinstance(source, BlockPageSource):
            raise ConfigError(
                f"{source!r} is not a BlockPageSource: it needs name, gfp, description, "
                "defers_to_worker and an async get_page(task, mm)"
            )
        check_variant_name(source.name)
        if source.name in self._by_name and not replace:
            raise ConfigError(
                f"variant {source.name!r} is already registered; pass replace=True to override"
            )
        self._by_name[source.name] = source

    def lookup(self, name: str) -> BlockPageSource:
        """The variant called ``name``; unknown names list the known ones."""
        try:
            return self._by_name[name]
        except KeyError:
            known = ", ".join(sorted(self._by_name))
            hint = did_you_mean(name, self._by_name)
            raise ConfigError(f"unknown allocator variant {name!r}{hint}; known: {known}") from None

    def names(self) -> list[str]:
        """Every known name, built-ins first, in registration order."""
        return list(self._by_name)

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[BlockPageSource]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def __repr__(self) -> str:
        return f"<BlockSources {', '.join(self._by_name)}>"
