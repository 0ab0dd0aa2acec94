"""kvfree_rcu(): per-CPU block arrays, the monitor, bulk reclaim, page cache, shrinker, barrier.

The mechanism of kernel.md section 1, version by version (see :mod:`rcukit.rcu.profiles`):

* ``kvfree_call_rcu`` takes this CPU's ``krcp->lock`` (a ``raw_spinlock_t``, IRQs off) and
  stores the pointer in the current block of its channel (0: slab -> ``kfree_bulk``, 1: vmalloc
  -> ``vfree``/``vfree_bulk``). A full or missing block is replaced from the per-CPU page cache,
  or from the allocator-core *variant*, called inside the locked region where the profile does
  so (v5.9 / the RFC). On failure the two-argument form links its ``rcu_head`` into the list
  channel; the head-less form drops the lock, waits for a grace period and frees inline.
  v5.5 has no blocks: every two-argument call takes the list channel, and one batch per CPU.
* The monitor (delayed work) detaches the channels into a free ``krwp`` batch and hands it to
  ``queue_rcu_work``; after the grace period the reclaim work frees each block with one bulk call,
  walks the ``rcu_head`` list object by object (a cache miss each), and returns spare block pages
  to the cache or the page allocator, passing a quiescent state between blocks.

Everything a ``krcp`` holds is touched only from its own CPU (the caller, that CPU's kworker),
so per-CPU local time never lets another CPU see it early: the shrinker, the barrier and CPU
hot-unplug ask the owner CPU to act by queueing work there.

This module is the simulated kernel's *host* of the clock-free engine in
:mod:`rcukit.rcu.kvfree.core`: it adds ``krcp->lock`` (a raw spinlock with IRQs off), costs
charged to the CPU's local clock and the enqueue path, and composes the other mechanisms, each a
small part owning its own state, as ``mm/slab_common.c`` keeps them apart within one file:

* :mod:`.krc`: ``struct kfree_rcu_cpu`` (:class:`Krc`), its blocks and batches;
* :mod:`.monitor`: ``schedule_delayed_monitor_work``, ``kfree_rcu_monitor``, the batches;
* :mod:`.reclaim`: ``kfree_rcu_work``, ``kvfree_rcu_bulk``, ``kvfree_rcu_list``;
* :mod:`.page_cache`: the refill worker and its hrtimer, ``drain_page_cache``;
* :mod:`.drain`: the shrinker, ``kvfree_rcu_barrier`` and CPU hot-unplug;
* :mod:`.debug`: ``debug_rcu_head_queue``/``unqueue``.
"""

from __future__ import annotations

import random
from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING

from rcukit.errors import RcuUsageError
from rcukit.mm.gfp import format_gfp
from rcukit.rcu.kvfree.core import (
    KFREE_N_BATCHES,
    KvfreeCounters,
    KvfreePolicy,
    KvfreeStatistics,
)
from rcukit.rcu.kvfree.debug import KvfreeDebugObjects
from rcukit.rcu.kvfree.drain import KvfreeDrain
from rcukit.rcu.kvfree.krc import VMALLOC_START, Bnode, Krc, Krwp
from rcukit.rcu.kvfree.monitor import KvfreeMonitor
from rcukit.rcu.kvfree.page_cache import KvfreePageCache
from rcukit.rcu.kvfree.reclaim import KvfreeReclaim
from rcukit.rcu.kvfree.runs import KvfreeFlood
from rcukit.rcu.kvfree.variants import BlockPageSource, BlockSources, MmBootHook
from rcukit.rcu.profiles import KvfreeProfile, get_profile
from rcukit.sched.sim import Task

if TYPE_CHECKING:
    from rcukit.machine import Machine
    from rcukit.mm.kswapd import Shrinker
    from rcukit.mm.mm import Mm
    from rcukit.rcu.tree import RcuState

__all__ = ["KFREE_N_BATCHES", "Bnode", "Krc", "Krwp", "KvfreeRcu", "KvfreeStatistics"]


class KvfreeRcu:
    """The kvfree_rcu() subsystem of one kernel (``kernel.kvfree``): the enqueue path, and the
    parts that run the rest (``monitor``, ``reclaim``, ``page_cache``, ``drain``, ``debug``).

    ``block_sources`` is the kernel's registry of allocator-core variants (built-ins plus the
    user's, see :class:`~rcukit.rcu.kvfree.variants.BlockSources`); ``config.kvfree.variant``
    is resolved against it here, when the kernel is built: a user's variant is passed in with
    ``boot(config, block_sources=[...])``, so it cannot change under a running kernel.
    """

    def __init__(
        self,
        kernel: Machine,
        mm: Mm,
        rcu: RcuState,
        block_sources: BlockSources | None = None,
    ) -> None:
        self.kernel = kernel
        cfg = kernel.config
        self.profile: KvfreeProfile = get_profile(cfg.kvfree.profile)
        self.mm = mm
        self.rcu = rcu
        self.block_sources = block_sources if block_sources is not None else BlockSources()
        self.variant: BlockPageSource = self.block_sources.lookup(cfg.kvfree.variant)
        if isinstance(self.variant, MmBootHook):
            self.variant.boot_mm(mm)  # e.g. raw-zone-lock: zone->lock's class, before use
        self.variant_gfp_text = format_gfp(self.variant.gfp)
        self.capacity = self.profile.block_capacity(
            cfg.page_size, cfg.pointer_size, cfg.kvfree.header
        )
        self.policy = KvfreePolicy.from_profile(
            self.profile,
            self.capacity,
            preempt_rt=cfg.preempt_rt,
            defers_to_worker=self.variant.defers_to_worker,
            min_cached=cfg.kvfree.rcu_min_cached_objs,
            list_channel=True,
        )
        self.wq = kernel.system_wq
        #: Every count, live (the fast path bumps one per call: see KvfreeCounters).
        self.counters = KvfreeCounters()
        #: ``head->func`` of the rcu_heads on the krcps' lists: each queued rcu_head's offset in
        #: its object (a list, for a head queued twice), taken by ``kvfree_rcu_list()``.
        self.head_offsets: dict[int, list[int]] = {}
        # The parts, each owning its state; the krcs reach their work functions.
        self.debug = KvfreeDebugObjects(self)
        self.reclaim = KvfreeReclaim(self)
        self.monitor = KvfreeMonitor(self)
        self.page_cache = KvfreePageCache(self)
        self.drain = KvfreeDrain(self)
        self.flood = KvfreeFlood(self)
        #: The registered "kfree_rcu" shrinker (None before ~v5.7, and until ``start()``).
        self.shrinker: Shrinker | None = None
        self.krcs = [Krc(self, c) for c in range(cfg.nr_cpus)]
        c = cfg.cost
        self._lock_ns = c.raw_lock_ns
        self._store_ns = c.kvfree_store_ns
        self._fast_ns = c.raw_lock_ns + c.kvfree_store_ns
        self._polled = self.policy.polled_snapshots
        self._headless = self.policy.headless
        self._slab_of = mm.slab._slab_of
        self._page_offset = mm.page_offset
        self._page_shift = mm.slab.page_shift
        #: The monitor's arming, bound once: the fast path calls it without a hop.
        self._arm_monitor = self.monitor.arm_monitor
        # Debug objects and polled snapshots send every call down the modelled slow path (the
        # fast path does neither). No tracepoint does: kvfree_call_rcu() emits no event per
        # call (kernel/rcu/tree.c, v5.9-v6.x; rcu_kvfree_callback is __call_rcu()'s, for a
        # kfree offset given to call_rcu()), so a trace keeps the fast path.
        always_slow = self.debug.enabled or self._polled
        #: Every two-argument call takes :meth:`_kvfree_slow`.
        self._slow_double = always_slow
        #: Every head-less call does: also without the head-less form (pre-v5.9), so the
        #: fast path needs no test of the form; the slow path raises the usage error.
        self._slow_single = always_slow or not self._headless

    def force_slow_path(self) -> None:
        """Send every call down the modelled slow path (:meth:`_kvfree_slow`), as a trace of
        each ``krcp->lock`` hold needs: the fast path takes the lock inline, unseen."""
        self._slow_double = self._slow_single = True

    @property
    def pending(self) -> int:
        """Objects queued and not yet freed."""
        return self.counters.pending_total

    @property
    def timeline(self) -> list[tuple[int, int, int]]:
        """(time_ns, pending objects, pending block pages) sampled at monitor and reclaim runs."""
        return self.reclaim.timeline

    @property
    def freed_listeners(self) -> list[Callable[[int], None]]:
        """Called with the number of objects each time some are freed."""
        return self.reclaim.freed_listeners

    async def kvfree_rcu_barrier(self, task: Task) -> None:
        """``kvfree_rcu_barrier()``: see :meth:`KvfreeDrain.kvfree_rcu_barrier`."""
        await self.drain.kvfree_rcu_barrier(task)

    def _no_headless(self, ptr: int) -> RcuUsageError:
        return RcuUsageError(
            f"kvfree_rcu(0x{ptr:x}) without an rcu_head: the head-less form arrived in v5.9 "
            f"(kernel/rcu/tree.c, kvfree_call_rcu); profile {self.profile.name} has only "
            "kfree_rcu(ptr, rhf): pass the rcu_head"
        )

    # -- boot --------------------------------------------------------------------------------
    def start(self) -> None:
        """``kvfree_rcu_init()``: (v5.9) fill the caches, register the shrinker and the
        hot-unplug callback."""
        if self.policy.boot_prefill and self.policy.min_cached:
            self.page_cache.fill_at_boot()
        drain = self.drain
        if self.policy.shrinker:  # not before ~v5.7
            self.shrinker = self.mm.register_shrinker(
                "kfree_rcu", drain.kfree_rcu_shrink_count, drain.kfree_rcu_shrink_scan
            )
        self.rcu.add_hotplug_callback(drain.cpu_hotplug)

    # -- the enqueue path ------------------------------------------------------------------------
    async def kvfree_rcu(self, task: Task, ptr: int | None, head: int | None = None) -> None:
        """Two-argument ``kvfree_rcu(ptr, rhf)`` when ``head`` (the rcu_head's address inside
        the object) is given, the head-less ``kvfree_rcu(ptr)`` otherwise.

        The common case (a block with room) runs inline here; everything else goes through
        :meth:`_kvfree_slow`, which models the same steps with full lock checking.
        """
        if not ptr:
            return
        # One counter per call, bumped here as if the call took the fast path (fast_calls,
        # calls_single and pending add these up); the slow path takes it back below.
        ctr = self.counters
        if head is None:
            # hardirq context always has irqs_disabled set, so this covers in_atomic()
            if task.preempt_count or task.irqs_disabled or task.rcu_read_nesting:
                self._might_sleep(task, ptr)
            # a profile without the head-less form always takes the slow path, which raises
            # the usage error
            slow = self._slow_single
            ctr.fast_single += 1
        else:
            slab = self._slab_of.get((ptr - self._page_offset) >> self._page_shift)
            off = head - ptr
            if slab is None or not 0 <= off < slab.cache.size:
                self._check_head(ptr, head)
            slow = self._slow_double
            ctr.fast_double += 1
        cpu = task.cpu
        krcp = self.krcs[cpu.id]
        bnode = krcp.cur_bnode
        if bnode is not None and not (slow or ptr >= VMALLOC_START):
            n = bnode.nr_records
            # krc_this_cpu_lock() ... store ... krc_this_cpu_unlock(): a raw lock with IRQs
            # off can never be an invalid wait context and nothing in between can sleep, so
            # the lock model has nothing to check here; its cost is charged all the same.
            # The records array holds exactly a block's capacity: a full block refuses the
            # store (once per block), which spares a room check on every call.
            try:
                bnode.records[n] = ptr
            except IndexError:
                pass
            else:
                # krcp->count++ is this store's (see Krc.count)
                n += 1
                bnode.nr_records = n
                t = cpu.local_ns + self._fast_ns
                cpu.local_ns = t
                # schedule_delayed_monitor_work() on every call; it nearly always finds the
                # monitor armed already, which the last call worked out (mon_quiet_below,
                # here as a record count of this block)
                if n >= krcp.quiet_nr:
                    self._arm_monitor(task, krcp)
                if t >= cpu.next_tick_ns:
                    await task.preempt_point()
                return
        if head is None:
            ctr.fast_single -= 1
        else:
            ctr.fast_double -= 1
        await self._kvfree_slow(task, head, ptr)

    kvfree_rcu_mightsleep = kvfree_rcu

    async def kvfree_rcu_flood(
        self,
        task: Task,
        size: int,
        gfp: int,
        n: int,
        head_offset: int | None = None,
        mix: random.Random | None = None,
    ) -> int:
        """``n`` x (``kmalloc(size, gfp)``; ``kvfree_rcu()``), advanced a run at a time: see
        :meth:`rcukit.rcu.kvfree.runs.KvfreeFlood.kvfree_rcu_flood`."""
        return await self.flood.kvfree_rcu_flood(task, size, gfp, n, head_offset, mix)

    async def kvfree_call_rcu(self, task: Task, head: int | None, ptr: int) -> None:
        """``kvfree_call_rcu(head, ptr)`` (the v6.3 argument order)."""
        await self.kvfree_rcu(task, ptr, head)

    def _might_sleep(self, task: Task, ptr: int) -> None:
        """A head-less call from atomic context: the usage error first where the form does not
        exist (as the slow path raises it), else ``might_sleep()``'s splat."""
        if not self._headless:
            raise self._no_headless(ptr)
        self.kernel.locks.might_sleep(task, "kvfree_call_rcu")

    def _check_head(self, ptr: int, head: int) -> None:
        if not 0 <= head - ptr < self._object_size(ptr):
            raise RcuUsageError(
                f"kvfree_rcu(ptr=0x{ptr:x}, head=0x{head:x}): the rcu_head is not inside the "
                f"object (allowed: ptr <= head < ptr + ksize(ptr))"
            )

    async def _kvfree_slow(self, task: Task, head: int | None, ptr: int) -> None:
        """The full path: a new block, the fallbacks, tracing, debug objects, polled snaps."""
        single = head is None
        if single and not self._headless:
            raise self._no_headless(ptr)
        cpu = task.cpu
        t0 = cpu.local_ns
        ctr = self.counters
        ctr.slow_calls += 1
        if single:
            ctr.slow_single += 1
        if ptr >= VMALLOC_START:
            ctr.queued_vmalloc += 1
        if self.debug.enabled:
            self.debug.debug_rcu_head_queue(task, ptr)
        krcp = self.krcs[cpu.id]
        # krc_this_cpu_lock(): local_irq_save + raw_spin_lock (lockdep-free: see kvfree_rcu).
        task.irqs_disabled += 1
        task.preempt_count += 1
        task.held_locks.append(krcp.held)
        cpu.local_ns += self._lock_ns
        idx = 1 if ptr >= VMALLOC_START else 0
        ok = True
        chan = krcp.bulk[idx]
        bnode = chan[-1] if chan else None
        if bnode is None or bnode.nr_records == self.capacity:
            krcp, bnode = await self._new_block(task, krcp, idx, single)
            ok = bnode is not None
            # The v5.13+ direct allocation may sleep and the task migrate (CPU hot-unplug):
            # _new_block re-took the lock of the krcp it returns (see relock_same_krcp).
            cpu = task.cpu
        # read before the store: a store into the fast path's block counts itself (Krc.count)
        count = krcp.count + 1
        if bnode is not None:
            bnode.records[bnode.nr_records] = ptr
            bnode.nr_records += 1
            cpu.local_ns += self._store_ns
            if self._polled:
                bnode.gp_snap = self.rcu.get_state_synchronize_rcu(task)
        elif head is not None:  # (not single)
            # head->func = func (the offset); head->next = krcp->head; krcp->head = head
            if krcp.head is None:
                krcp.head = array("Q")
            krcp.head.append(head)
            self.head_offsets.setdefault(head, []).append(head - ptr)
            ctr.fallback_rcu_head += 1
            if self._polled:
                krcp.head_gp_snap = self.rcu.get_state_synchronize_rcu(task)
        if ok or not single:
            krcp.count = count
            ctr.pending += 1
            # schedule_delayed_monitor_work(), which has nothing to do below
            # mon_quiet_below (as on the fast path)
            if count >= krcp.mon_quiet_below:
                self._arm_monitor(task, krcp)
        krcp.raw_spin_unlock_irqrestore(task)
        if not ok and single:
            # Head-less fallback: "can be used from might_sleep() context only".
            ctr.fallback_synchronize += 1
            await self.rcu.synchronize_rcu(task)
            if self.debug.enabled:
                self.debug.debug_rcu_head_unqueue(ptr)
            await self.mm.kvfree(task, ptr)
            ctr.pending += 1
            self.reclaim.note_freed(1)
        lat = task.cpu.local_ns - t0
        ctr.latency[lat] = ctr.latency.get(lat, 0) + 1
        if task.cpu.local_ns >= task.cpu.next_tick_ns:
            await task.preempt_point()

    def _object_size(self, ptr: int) -> int:
        if ptr >= VMALLOC_START:
            return int(self.mm.vmap.area_size(ptr))
        return int(self.mm.slab.object_size(ptr))

    async def _new_block(
        self, task: Task, krcp: Krc, idx: int, can_alloc: bool
    ) -> tuple[Krc, Bnode | None]:
        """Attach a fresh block to channel ``idx`` of the returned krcp, whose lock is held;
        None means "use the fallback".

        Without blocks (v5.5 ``kfree_call_rcu()``) that is every call: a two-argument call
        links its ``rcu_head`` on ``krcp->head``; v5.5 has no head-less form, so a head-less
        call does what a caller without an ``rcu_head`` must: ``synchronize_rcu(); kfree()``.

        The v5.13+ head-less allocation drops the lock and may sleep; 5.13-6.4 re-take it with
        ``*krcp = krc_this_cpu_lock(flags)``, the krcp of the CPU the task is on now (another
        one after a migration), v6.5 (309a43165077) the krcp it dropped.
        """
        if not (krcp.initialized and self.policy.blocks):
            return krcp, None
        ctr = self.counters
        page: int | None = krcp.get_cached_bnode()
        if page is not None:
            ctr.blocks_from_cache += 1
        else:
            pol = self.policy
            attempted = False
            if can_alloc and pol.single_arg_direct_alloc:
                # v5.13+: drop the lock, allocate as a sleepable context, re-take it.
                krcp.raw_spin_unlock_irqrestore(task)
                attempted = True
                page = await self.mm.get_free_page(task, pol.refill_gfp)
                if not pol.relock_same_krcp:
                    krcp = self.krcs[task.cpu.id]
                krcp.raw_spin_lock_irqsave(task)
            elif pol.alloc_under_lock:
                if self.variant.defers_to_worker:
                    self.page_cache.run_page_cache_worker(task, krcp)
                else:
                    attempted = True
                    page = await self.variant.get_page(task, self.mm)
                    ctr.block_alloc_in_lock += 1
                    if page is None:
                        ctr.block_alloc_in_lock_failures += 1
            if attempted:
                ctr.block_alloc_attempts += 1
                if page is None:
                    ctr.block_alloc_failures += 1
            if page is None:
                if pol.refill_worker:
                    self.page_cache.run_page_cache_worker(task, krcp)
                return krcp, None
        bnode = Bnode(page, self.capacity)
        krcp.bulk[idx].append(bnode)
        krcp.note_bulk0()
        ctr.note_block()
        return krcp, bnode

    # -- results -------------------------------------------------------------------------------
    def statistics(self) -> KvfreeStatistics:
        """A frozen snapshot of the counters since boot (the live ones keep moving)."""
        return self.counters.statistics(
            cached_pages=sum(len(k.cache) for k in self.krcs), fast_ns=self._fast_ns
        )
