"""kvfree_rcu()'s reclaim: what runs once a batch's grace period has passed.

``kfree_rcu_work()`` (the ``rcu_work`` of one ``krwp``) takes the batch under the lock and frees
it outside: each block with one bulk call (``kvfree_rcu_bulk()``: ``kfree_bulk``, or the vmalloc
channel object by object or with the RFC's ``vfree_bulk``), the ``rcu_head`` list object by
object (``kvfree_rcu_list()``, a cache miss each), and the spare block pages back to the cache
or the page allocator, passing a quiescent state between blocks.
"""

from __future__ import annotations

from array import array
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING

from rcukit.errors import MemoryDebugError
from rcukit.rcu.kvfree.krc import Bnode, Krc, KrwpWork, KvfreePart
from rcukit.sched.sim import Task
from rcukit.wq import Work, current_frames

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
        # the block's own array: kfree_bulk reads it as bytes (see SlabAllocator._slab_runs);
        # a tiled block's records are never read unless something goes wrong
        ptrs = bnode.records[:nr] if not tiled or idx or debug.enabled else bnode.records
        if debug.enabled:
            for p in ptrs:
                debug.debug_rcu_head_unqueue(p)
        if idx == 0:
            if k.tracer.tp.rcu_invoke_kfree_bulk_callback:
                k.trace(
                    task, "rcu_invoke_kfree_bulk_callback",
                    f"{self._rcu.name} bulk=0x{bnode.page:x} nr_records={nr}",
                )
            try:
                if segs is not None and tiled:
                    await mm.slab.kfree_bulk_segments(task, segs)
                else:
                    await mm.kfree_bulk(task, ptrs)
            except MemoryDebugError as err:
                if tiled:
                    # the error path wants the pointers the segments stood for
                    bnode.fill_records()
                    ptrs = bnode.records[:nr]
                await self.free_bulk_skipping_bad(task, ptrs, err, mm.kfree_bulk)
        elif self._policy.vfree_bulk:
            try:
                await mm.vfree_bulk(task, ptrs)
            except MemoryDebugError as err:
                await self.free_bulk_skipping_bad(task, ptrs, err, mm.vfree_bulk)
        else:
            for p in ptrs:
                # kfree_rcu_work(), a vmalloc block: each record with offset 0 (func=%ld)
                if k.tracer.tp.rcu_invoke_kvfree_callback:
                    k.trace(task, "rcu_invoke_kvfree_callback",
                            f"{self._rcu.name} rhp=0x{p:x} func=0")
                try:
                    await mm.vfree(task, p)
                except MemoryDebugError as err:
                    self.report_bad_free(task, err, ["vfree"])
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
            page = bnode.page
            # free_page() of a page that goes onto the pcp list is one that cannot sleep
            if page & (mm.page_size - 1) or not mm.page_alloc.free_page_nowait(
                task, mm.virt_to_pfn(page)
            ):
                await mm.free_page(task, page)
        await task.cond_resched()

    async def kvfree_rcu_list(self, task: Task, head: array[int]) -> None:
        """``kvfree_rcu_list``: pointer chasing through rcu_heads, one ``kvfree`` per object:
        the object is the rcu_head minus its offset (``head->func``), and
        ``rcu_invoke_kvfree_callback`` prints the rcu_head and that offset (``rhp=%p
        func=%ld``, kernel/rcu/tree.c, v5.9-v6.x)."""
        k = self._kernel
        miss = k.config.cost.cache_miss_ns
        debug = self._debug
        offsets = self._kv.head_offsets
        for rhp in head.tolist():
            queued = offsets[rhp]
            off = queued.pop(0)
            if not queued:
                del offsets[rhp]
            p = rhp - off
            task.charge(miss)
            if debug.enabled:
                debug.debug_rcu_head_unqueue(p)
            if k.tracer.tp.rcu_invoke_kvfree_callback:
                k.trace(task, "rcu_invoke_kvfree_callback",
                        f"{self._rcu.name} rhp=0x{rhp:x} func={off}")
            try:
                await self._mm.kvfree(task, p)
            except MemoryDebugError as err:
                self.report_bad_free(task, err, ["kfree", "kvfree"])
        self.note_freed(len(head))
        await task.cond_resched()

    # -- the error path: a bad pointer found while freeing (kernel: report, skip, go on) -------
    async def free_bulk_skipping_bad(
        self,
        task: Task,
        ptrs: Sequence[int],
        err: MemoryDebugError,
        free: Callable[[Task, Sequence[int]], Awaitable[None]],
    ) -> None:
        """A bulk free met a pointer KASAN refuses: report it, leave it out, free the rest.

        ``kmem_cache_free_bulk()`` (mm/slub.c, v5.9) chains each slab's objects into a
        detached freelist and ``slab_free()`` runs ``slab_free_freelist_hook()``, which drops
        every object whose ``slab_free_hook()`` returns true: ``__kasan_slab_free()`` does so
        after ``kasan_report_invalid_free()`` for an object already free (or not an object).
        So one bad pointer costs a report and the others are freed. rcukit's allocator checks
        the whole array first and raises at the first bad one; this path reports it, drops
        that occurrence (the later one of a pointer listed twice) and frees the rest again,
        until the rest goes through. An error on a pointer not in the array is not a bad
        pointer of this call and is raised."""
        rest = list(ptrs)
        while True:
            i = _bad_index(rest, err)
            if i < 0:
                raise err
            self.report_bad_free(task, err, ["kmem_cache_free_bulk"])
            del rest[i]
            try:
                await free(task, rest)
                return
            except MemoryDebugError as again:
                err = again

    def report_bad_free(self, task: Task, err: MemoryDebugError, inner: list[str]) -> None:
        """Report ``err`` as the kernel's detector prints it, in the reclaim's call chain.

        A slab object: KASAN's ``kasan_report_invalid_free()`` from ``slab_free_hook()``, its
        ip the caller of ``kfree``/``kmem_cache_free_bulk`` (``kfree_bulk()`` is inline). A
        vmalloc address: ``__vunmap()``'s ``WARN(1, "Trying to vfree() nonexistent vm area
        (%p)")`` (``vfree()`` itself from 6.3), and the area is left alone. 6.3 split
        ``kvfree_rcu_bulk()``/``kvfree_rcu_list()`` out of ``kfree_rcu_work()``."""
        panic = self._kernel.panic
        chain, wq = current_frames(task)
        split = self._kernel.config.kernel_version >= (6, 3)
        helper = ("kvfree_rcu_list" if "kvfree" in inner else "kvfree_rcu_bulk") if split else ""
        below = [f for f in (helper, *chain) if f]
        if self._mm.is_vmalloc_addr(err.ptr):
            caller = "vfree" if split else "__vunmap"
            frames = [caller, *([] if caller in inner else inner), *below]
            msg = f"Trying to vfree() nonexistent vm area ({err.ptr:#x})"
            panic.warn(task, caller, frames, message=msg, workqueue=wq)
            return
        ip = inner[-1] if len(inner) > 1 else below[0]
        kasan = ["print_address_description", "kasan_report_invalid_free", "__kasan_slab_free",
                 "slab_free_freelist_hook"]
        if err.kind:
            panic.kasan_report_invalid_free(task, err, ip, [*kasan, *inner, *below],
                                            workqueue=wq)
        else:
            panic.bad_page(task, err, [*inner, *below], workqueue=wq)

    def note_freed(self, n: int) -> None:
        """``n`` queued objects were freed: count them and tell the listeners."""
        self._counters.note_freed(n)
        for cb in self.freed_listeners:
            cb(n)


def _bad_index(ptrs: list[int], err: MemoryDebugError) -> int:
    """Where in ``ptrs`` the free ``err`` reports failed: the second occurrence of a pointer
    listed twice, else its first; -1 if the pointer is not there."""
    p = err.ptr
    try:
        first = ptrs.index(p)
    except ValueError:
        return -1
    if "appears twice" in err.detail:
        try:
            return ptrs.index(p, first + 1)
        except ValueError:
            return first
    return first
