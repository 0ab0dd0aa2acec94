"""kvfree_rcu()'s per-CPU page cache (``bkvcache``) and the worker that refills it.

The enqueue path takes a block page from the cache (``get_cached_bnode()``) because it may not
allocate under ``krcp->lock``; reclaim puts pages back (``put_cached_bnode()``). From v5.11 a
miss arms ``run_page_cache_worker()``: an hrtimer (``schedule_page_work_fn()``, so that
``queue_work`` is never called under the raw lock) queues ``fill_page_cache_func()``, which
allocates in a clean context; v5.14's shrinker backs it off and drains the cache
(``drain_page_cache()``). v5.9 instead fills each cache once at boot.
"""

from __future__ import annotations

from rcukit.rcu.kvfree.krc import Krc, KrcWork, KvfreePart
from rcukit.sched.sim import Task
from rcukit.wq import Work

__all__ = ["KvfreePageCache"]


class KvfreePageCache(KvfreePart):
    """Filling, refilling and draining each ``krcp``'s spare block pages."""

    def fill_at_boot(self) -> None:
        """v5.9's ``kfree_rcu_batch_init()`` fills each CPU's cache before the scheduler runs:
        boot memory, charged to no task."""
        min_cached = self._policy.min_cached
        for krcp in self._kv.krcs:
            for _ in range(min_cached):
                pfn = self._mm.alloc_pages_early()
                if pfn is None:
                    break
                krcp.cache.append(self._mm.page_address(pfn))

    def run_page_cache_worker(self, task: Task, krcp: Krc) -> None:
        """``run_page_cache_worker`` (v5.11+): an hrtimer, so queue_work is not called under
        the raw lock, kicks the refill; (v6.5) not at all when the cache is disabled."""
        if krcp.work_in_progress:
            return
        if self._policy.no_page_work_without_cache and not self._policy.min_cached:
            return
        krcp.work_in_progress = True
        self._kernel.sim.arm_timer(krcp.hrtimer, task.cpu, task.now_ns)

    def schedule_page_work_fn(self, krcp: Krc) -> None:
        """``schedule_page_work_fn``: queue the refill, after a delay if the shrinker asked
        to back off (v5.14+)."""
        k = self._kernel
        if self._policy.shrinker_backoff and krcp.backoff_page_cache_fill:
            delay = max(
                1, k.config.kvfree.rcu_delay_page_cache_fill_msec * k.config.hz // 1000
            )
            self._wq.queue_delayed_work(None, krcp.page_cache_work, delay, cpu=krcp.cpu)
        else:
            k.system_highpri_wq.queue_work(None, krcp.page_cache_work, cpu=krcp.cpu)

    async def fill_page_cache_func(self, task: Task, work: Work) -> None:
        """``fill_page_cache_func``: allocate ``nr_pages`` in a clean context.

        Up to v6.0 the loop runs from 0 and a failed allocation just moves on to the next
        try; v6.1 (093590c16b44) stops at the first failure; v6.5 (60888b77a06e) starts from
        the pages already cached. A page the full cache refuses is freed and ends the loop.
        """
        assert isinstance(work, KrcWork)
        krcp = work.krcp
        ctr = self._counters
        pol = self._policy
        nr_pages = 1 if krcp.backoff_page_cache_fill else pol.min_cached
        start = len(krcp.cache) if pol.fill_from_cached else 0
        for _ in range(start, nr_pages):
            ctr.block_alloc_attempts += 1
            page = await self._mm.get_free_page(task, pol.refill_gfp)
            if page is None:
                ctr.block_alloc_failures += 1
                if pol.fill_breaks_on_failure:
                    break
                continue
            if not krcp.put_cached_bnode(page, pol.min_cached):
                await self._mm.free_page(task, page)
                break
        krcp.work_in_progress = False
        krcp.backoff_page_cache_fill = False

    async def drain_page_cache(self, task: Task, work: Work) -> None:
        """``drain_page_cache`` (the shrinker's work on the cache's own CPU): give every
        spare page back."""
        krcp = self._kv.krcs[task.cpu.id]
        krcp.raw_spin_lock_irqsave(task)
        pages = krcp.cache
        krcp.cache = []
        krcp.raw_spin_unlock_irqrestore(task)
        self._counters.cache_pages_drained += len(pages)
        for page in pages:
            await self._mm.free_page(task, page)
