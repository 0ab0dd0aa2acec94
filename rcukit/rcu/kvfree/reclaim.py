"""kvfree_rcu()'s reclaim: what runs once a batch's grace period has passed.

``kfree_rcu_work()`` (the ``rcu_work`` of one ``krwp``) takes the batch under the lock and frees
it outside: each block with one bulk call (``kvfree_rcu_bulk()``: ``kfree_bulk``, or the vmalloc
channel object by object or with the RFC's ``vfree_bulk``), the ``rcu_head`` list object by
object (``kvfree_rcu_list()``, a cache miss each), and the spare block pages back to the cache
or the page allocator, passing a quiescent state between blocks.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from rcukit.rcu.kvfree.krc import Bnode, Krc, KrwpWork, KvfreePart
from rcukit.sched.sim import Task
from rcukit.wq import Work

if TYPE_CHECKING:
    from rcukit.rcu.kvfree.sim import KvfreeRcu

__all__ = ["KvfreeReclaim"]


class KvfreeReclaim(KvfreePart):
    """``kfree_rcu_work``, ``kvfree_rcu_bulk``, ``kvfree_rcu_list``; who hears of each free."""

    def __init__(self, kv: KvfreeRcu) -> None:
        super().__init__(kv)
        self._debug = kv.debug
        #: (time_ns, pending objects, pending block pages) sampled at monitor and reclaim runs.
        self.timeline: list[tuple[int, int, int]] = []
        #: Called with the number of objects each time some are freed.
        self.freed_listeners: list[Callable[[int], None]] = []

    async def kfree_rcu_work(self, task: Task, work: Work) -> None:
        """``kfree_rcu_work``: one bulk call per block, the list one by one, spare pages back."""
        assert isinstance(work, KrwpWork)
        krcp = work.krcp
        krwp = krcp.krw[work.idx]
        self._counters.grace_periods_waited += 1
        krcp.raw_spin_lock_irqsave(task)
        chans = krwp.bulk_free
        snaps = krwp.bulk_free_gp_snap
        krwp.bulk_free = [[], []]
        head = krwp.head_free
        krwp.head_free = None
        head_gp_snap = krwp.head_free_gp_snap
        krcp.raw_spin_unlock_irqrestore(task)
        poll = self._rcu.poll_state_synchronize_rcu
        ctr = self._counters
        for idx in (0, 1):
            blocks = chans[idx]
            # rcukit's observer (see KfreeRcuCpuWork.bulk_free_gp_snap): a channel reclaimed
            # before a full GP since its detach is the pre-6.3 krwp reuse freeing early.
            # Profiles with per-block snapshots check each block in kvfree_rcu_bulk instead,
            # and debug objects check each object (kvfree.debug), so neither counts twice.
            if (blocks and not self._policy.polled_snapshots and not self._debug.enabled
                    and not poll(snaps[idx])):
                ctr.gp_violations += len(blocks)
            for bnode in blocks:
                await self.kvfree_rcu_bulk(task, krcp, idx, bnode)
        if head is not None and not poll(head_gp_snap):
            if self._policy.gp_snap_check:
                # v6.5: the list is left alone (WARN_ON_ONCE) rather than freed early.
                ctr.gp_violations += 1
                head = None
            elif not self._debug.enabled:  # debug objects count each object instead
                ctr.gp_violations += 1
        if head is not None:
            await self.kvfree_rcu_list(task, head)
        self.sample_timeline(task)

    def sample_timeline(self, task: Task) -> None:
        ctr = self._counters
        self.timeline.append((task.now_ns, ctr.pending_total, ctr.blocks_in_use))

    async def kvfree_rcu_bulk(self, task: Task, krcp: Krc, idx: int, bnode: Bnode) -> None:
        """``kvfree_rcu_bulk``: free one block's records with one call, then its page
        (``put_cached_bnode``: kept if the cache is short, else given back).

        With polled snapshots (v6.3+) a block whose GP has not completed is a violation; from
        v6.5 (``WARN_ON_ONCE(!poll_state_synchronize_rcu_full(&bnode->gp_snap))``) its records
        are then left alone rather than freed early, and only its page is recycled.
        """
        k = self._kernel
        mm = self._mm
        ctr = self._counters
        nr = bnode.nr_records
        pol = self._policy
        if pol.polled_snapshots and not self._rcu.poll_state_synchronize_rcu(bnode.gp_snap):
            ctr.gp_violations += 1
            if pol.gp_snap_check:
                await self._recycle_bnode(task, krcp, bnode)
                return
        segs = bnode.segs
        # filled by run-based floods alone: its segments are the parse, and the records they
        # stand for were never written (KvfreeRcuBulkData.fill_records)
        tiled = segs is not None and bnode.seg_end == nr and nr > 0
        debug = self._debug
        if not tiled or debug.enabled:
            bnode.fill_records()
        # the block's own array: kfree_bulk reads it as bytes (see SlabAllocator._slab_runs)
        ptrs = bnode.records[:nr]
        if debug.enabled:
            for p in ptrs:
                debug.debug_rcu_head_unqueue(p)
        if idx == 0:
            if k.tracer.on:
                k.trace(
                    task, "rcu_invoke_kfree_bulk_callback",
                    f"{self._rcu.name} bulk=0x{bnode.page:x} nr_records={nr}",
                )
            if segs is not None and tiled:
                await mm.slab.kfree_bulk_segments(task, segs)
            else:
                await mm.kfree_bulk(task, ptrs)
        elif self._policy.vfree_bulk:
            await mm.vfree_bulk(task, ptrs)
        else:
            for p in ptrs:
                if k.tracer.on:
                    k.trace(task, "rcu_invoke_kvfree_callback",
                            f"{self._rcu.name} rhp=0x{p:x} func=0x0")
                await mm.vfree(task, p)
        ctr.bulk_calls += 1
        ctr.records_per_block[nr] = ctr.records_per_block.get(nr, 0) + 1
        self.note_freed(nr)
        await self._recycle_bnode(task, krcp, bnode)

    async def _recycle_bnode(self, task: Task, krcp: Krc, bnode: Bnode) -> None:
        """The end of ``kvfree_rcu_bulk``: the page back to the cache or the allocator."""
        mm = self._mm
        self._counters.blocks_in_use -= 1
        min_cached = self._policy.min_cached
        if len(krcp.cache) < min_cached:
            krcp.raw_spin_lock_irqsave(task)
            krcp.put_cached_bnode(bnode.page, min_cached)
            krcp.raw_spin_unlock_irqrestore(task)
        else:
            await mm.free_page(task, bnode.page)
        await task.cond_resched()

    async def kvfree_rcu_list(self, task: Task, head: array[int]) -> None:
        """``kvfree_rcu_list``: pointer chasing through rcu_heads, one ``kvfree`` per object."""
        k = self._kernel
        miss = k.config.cost.cache_miss_ns
        debug = self._debug
        for p in head.tolist():
            task.charge(miss)
            if debug.enabled:
                debug.debug_rcu_head_unqueue(p)
            if k.tracer.on:
                k.trace(task, "rcu_invoke_kvfree_callback",
                        f"{self._rcu.name} rhp=0x{p:x} func=0x0")
            await self._mm.kvfree(task, p)
        self.note_freed(len(head))
        await task.cond_resched()

    def note_freed(self, n: int) -> None:
        """``n`` queued objects were freed: count them and tell the listeners."""
        self._counters.note_freed(n)
        for cb in self.freed_listeners:
            cb(n)
