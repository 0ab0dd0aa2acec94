"""kswapd, reclaim and shrinkers: where freed memory comes from when the zone runs low.

The model (kernel.md 3.4): pages that "other kernel users" hold (page cache, anonymous memory,
the boot-time share given by ``MemoryConfig.initial_used_fraction``) sit in a reclaimable pool,
the stand-in for the LRU lists. Reclaim takes ``SWAP_CLUSTER_MAX`` (32) pages at a time from it
and gives them back to the buddy allocator under ``zone->lock``, then asks every registered
shrinker to scan (``shrink_slab``), which is how kvfree_rcu's page cache gives pages back.

``kswapd`` is a kthread blocked on ``pgdat->kswapd_wait``; ``wakeup_kswapd()`` takes that wait
queue's ``spinlock_t`` (``wake_up_interruptible``), the sleeping lock on PREEMPT_RT the RFC
complains about, but only when kswapd is actually asleep (``waitqueue_active``) and the zone is
not balanced or its watermark is boosted, as in the kernel. Woken, it reclaims until free pages
reach the high watermark, with a ``cond_resched()`` between chunks, and sleeps again.

Watermark boosting (5.1+, kernel.md 8.2; ``balance_pgdat()`` of 5.8 ``mm/vmscan.c``): every
watermark checked includes ``zone->watermark_boost``. A boosted kswapd first reclaims the boost
(``nr_boost_reclaim`` pages) even when the zone is balanced; if the zone is not balanced it
forgets the boost and reclaims to the (boosted) high watermark instead. Either way, when it is
done it takes ``zone->lock`` and lowers the boost by what it was when the run began.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import attrs

from rcukit.locking.locks import LockKind
from rcukit.sched.sim import Task, WaitQueue

if TYPE_CHECKING:
    from rcukit.mm.mm import Mm

#: Pages per reclaim pass (``SWAP_CLUSTER_MAX``).
SWAP_CLUSTER_MAX = 32
#: Objects a shrinker is asked to scan per pass at most (``SHRINK_BATCH``).
SHRINK_BATCH = 128
#: kswapd gives up on a node after this many passes without progress (``MAX_RECLAIM_RETRIES``).
MAX_RECLAIM_RETRIES = 16

ShrinkCount = Callable[[Task], int]
ShrinkScan = Callable[[Task, int], Awaitable[int]]


@attrs.define(eq=False)
class Shrinker:
    """A registered shrinker: ``count(task)`` says how much is freeable, ``scan`` frees some.

    ``scan(task, nr_to_scan)`` returns the number of pages it gave back (it frees them itself,
    for example with ``free_pages``). Like ``struct shrinker``'s ``count_objects`` and
    ``scan_objects``; kvfree_rcu registers one for its per-CPU page caches (kernel.md 1.6).
    """

    name: str
    count: ShrinkCount
    scan: ShrinkScan
    #: Passes that called ``scan`` and the total it reported freed.
    scans: int = 0
    freed: int = 0


class ReclaimablePool:
    """Pages other kernel users hold, as ``(pfn, order)`` blocks; reclaim takes from the end.

    Blocks are split on demand so a 32-page reclaim out of a 4 MiB block frees exactly 32
    pages; the rest stays in use. Deterministic: always the most recently added block first.
    """

    __slots__ = ("blocks", "nr_pages")

    def __init__(self) -> None:
        self.blocks: list[tuple[int, int]] = []
        self.nr_pages = 0

    def add(self, pfn: int, order: int) -> None:
        self.blocks.append((pfn, order))
        self.nr_pages += 1 << order

    def take(self, nr: int) -> list[tuple[int, int]]:
        """Remove up to ``nr`` pages, as aligned blocks ready to free to the buddy allocator."""
        out: list[tuple[int, int]] = []
        blocks = self.blocks
        while nr > 0 and blocks:
            pfn, order = blocks.pop()
            while (1 << order) > nr:
                order -= 1
                blocks.append((pfn + (1 << order), order))
            out.append((pfn, order))
            nr -= 1 << order
            self.nr_pages -= 1 << order
        return out


class Kswapd:
    """``kswapd0`` of the one simulated node, plus reclaim shared with direct reclaimers."""

    def __init__(self, mm: Mm) -> None:
        self.mm = mm
        kernel = mm.kernel
        #: ``pgdat->kswapd_wait``; kswapd blocks here.
        self.wait = WaitQueue("kswapd_wait")
        #: The wait queue's own lock (``wq_head->lock``), a ``spinlock_t``.
        self.wait_lock = kernel.new_lock("&pgdat->kswapd_wait", LockKind.SPINLOCK)
        self.pool = ReclaimablePool()
        self.shrinkers: list[Shrinker] = []
        self.task: Task | None = None
        #: Consecutive balance runs that reclaimed nothing (``pgdat->kswapd_failures``).
        self.failures = 0

    # -- shrinkers -----------------------------------------------------------------------------
    def register_shrinker(self, name: str, count: ShrinkCount, scan: ShrinkScan) -> Shrinker:
        """``register_shrinker()``; returns the handle :meth:`unregister_shrinker` takes."""
        shrinker = Shrinker(name, count, scan)
        self.shrinkers.append(shrinker)
        return shrinker

    def unregister_shrinker(self, shrinker: Shrinker) -> None:
        self.shrinkers.remove(shrinker)

    async def shrink_slab(self, task: Task, nr_to_scan: int) -> int:
        """Ask each shrinker with something freeable to scan up to ``SHRINK_BATCH`` objects."""
        freed = 0
        for shrinker in list(self.shrinkers):
            count = shrinker.count(task)
            if count <= 0:
                continue
            n = await shrinker.scan(task, min(count, nr_to_scan, SHRINK_BATCH))
            shrinker.scans += 1
            shrinker.freed += n
            freed += n
        return freed

    # -- reclaim ---------------------------------------------------------------------------------
    async def shrink_node(self, task: Task, nr_to_reclaim: int, *, charge_scan: bool) -> int:
        """One reclaim pass: LRU pages back to the buddy lists, then the shrinkers.

        ``charge_scan`` charges ``reclaim_page_ns`` per page (kswapd's CPU time); direct
        reclaim charges its pass as a whole instead. Pages go back under ``zone->lock``.
        """
        mm = self.mm
        await task.sync()
        # No await from here to the release: the pool and the buddy lists agree at every
        # hand-off, even if the simulation ends while this task is parked.
        blocks = self.pool.take(nr_to_reclaim)
        n = sum(1 << order for _, order in blocks)
        cost = mm.cost
        if charge_scan and n:
            task.charge(n * cost.reclaim_page_ns)
        if blocks:
            lock = mm.zone.lock
            mm.locks.acquire(task, lock, "shrink_node", irqsave=True)
            mm.page_alloc.count_zone_lock()
            task.charge(mm.spin_lock_cost + n * cost.buddy_free_page_ns)
            mm.page_alloc.release_reclaimed(blocks)
            mm.locks.release(task, lock)
        freed = await self.shrink_slab(task, nr_to_reclaim)
        return n + freed

    # -- kswapd itself -----------------------------------------------------------------------------
    def balanced(self) -> bool:
        """``pgdat_balanced()``: free pages above the high watermark (boost included)."""
        zone = self.mm.zone
        return zone.buddy.nr_free > zone.wmark.high + zone.watermark_boost

    async def wakeup(self, task: Task, gfp: int, order: int) -> bool:
        """``wakeup_kswapd()``: True if kswapd was woken (and the wait-queue lock taken).

        A balanced node is left alone unless its watermark is boosted
        (``pgdat_watermark_boosted()``). Wake-ups made under kvfree_rcu's ``krcp->lock`` are
        also counted as ``kswapd_wakeups_in_krcp``.
        """
        mm = self.mm
        await task.sync()
        if not self.wait.waiters:  # !waitqueue_active(): kswapd is already running
            return False
        if self.failures >= MAX_RECLAIM_RETRIES or (
            self.balanced() and not mm.zone.watermark_boost
        ):
            return False
        if mm.tp.mm_vmscan_wakeup_kswapd:
            mm.kernel.trace(
                task,
                "mm_vmscan_wakeup_kswapd",
                f"nid=0 order={order} gfp_flags={mm.gfp_name(gfp)}",
            )
        lock = self.wait_lock
        mm.locks.acquire(task, lock, "wakeup_kswapd", irqsave=True)
        task.charge(mm.cost.kswapd_wakeup_ns)
        self.wait.wake_all(task.now_ns)
        mm.locks.release(task, lock)
        mm.vmstat.inc("kswapd_wake")
        if mm.page_alloc.in_krcp(task):
            mm.vmstat.inc("kswapd_wakeups_in_krcp")
        return True

    async def main(self, task: Task) -> None:
        """The kthread: sleep on ``kswapd_wait``; when woken, :meth:`balance_pgdat`."""
        self.task = task
        task.data["PF_MEMALLOC"] = True
        while True:
            await task.block(self.wait, "kswapd")
            await self.balance_pgdat(task)

    async def balance_pgdat(self, task: Task) -> None:
        """``balance_pgdat()`` of 5.8: reclaim to the high watermark, or the boost first.

        ``nr_boost_reclaim`` starts at the zone's boost; while the zone is balanced kswapd
        reclaims that much anyway, and an unbalanced zone drops it ("ignore boosting") and
        reclaims to the high watermark, boost included. At ``out:`` the boost snapshot is
        taken back off ``zone->watermark_boost`` under ``zone->lock``. A run that reclaims
        nothing and leaves the loop unbalanced or still boosting counts as a
        ``kswapd_failures``; one that finds the node balanced does not.
        """
        mm = self.mm
        vmstat = mm.vmstat
        vmstat.inc("pageoutrun")
        await task.sync()  # the zone's boost and free count are shared state
        zone = mm.zone
        boost = zone.watermark_boost
        nr_boost_reclaim = boost
        progress = False
        while True:
            balanced = self.balanced()
            if not balanced and nr_boost_reclaim:
                nr_boost_reclaim = 0  # "goto restart" without the boost
            if balanced and not nr_boost_reclaim:
                break  # goto out
            n = await self.shrink_node(task, SWAP_CLUSTER_MAX, charge_scan=True)
            if n <= 0:
                # Out of the priority loop with nothing reclaimed this pass.
                if not progress:
                    self.failures += 1
                break
            progress = True
            vmstat.inc("pgsteal_kswapd", n)
            nr_boost_reclaim -= min(nr_boost_reclaim, n)
            await task.cond_resched()
        if progress:
            self.failures = 0
        if boost:
            await task.sync()
            lock = zone.lock
            mm.locks.acquire(task, lock, "balance_pgdat", irqsave=True)
            mm.page_alloc.count_zone_lock()
            zone.watermark_boost -= min(zone.watermark_boost, boost)
            task.charge(mm.spin_lock_cost)
            mm.locks.release(task, lock)
            mm.page_alloc.update_fast_mark()
            vmstat.inc("watermark_boost_decays")
