"""kvfree_rcu(): per-CPU block arrays, the monitor, bulk reclaim, page cache, shrinker, barrier.

The mechanism of kernel.md section 1, version by version (see :mod:`rcukit.rcu.profiles`):

* ``kvfree_call_rcu`` takes this CPU's ``krcp->lock`` (a ``raw_spinlock_t``, IRQs off) and
  stores the pointer in the current block of its channel (0: slab -> ``kfree_bulk``, 1: vmalloc
  -> ``vfree``/``vfree_bulk``). A full or missing block is replaced from the per-CPU page cache,
  or from the allocator-core *variant*, called inside the locked region where the profile does
  so (v5.9 / the RFC). On failure the two-argument form links its ``rcu_head`` into the list
  channel; the head-less form drops the lock, waits for a grace period and frees inline.
* The monitor (delayed work) detaches the channels into a free ``krwp`` batch and hands it to
  ``queue_rcu_work``; after the grace period the reclaim work frees each block with one bulk call,
  walks the ``rcu_head`` list object by object (a cache miss each), and returns spare block pages
  to the cache or the page allocator, passing a quiescent state between blocks.

Everything a ``krcp`` holds is touched only from its own CPU (the caller, that CPU's kworker),
so per-CPU local time never lets another CPU see it early: the shrinker, the barrier and CPU
hot-unplug ask the owner CPU to act by queueing work there.

This module is the simulated kernel's *host* of the clock-free engine in
:mod:`rcukit.rcu.kvfree.core`: it adds ``krcp->lock`` (a raw spinlock with IRQs off), costs
charged to the CPU's local clock, the workqueue monitor and ``rcu_work``, the page-cache refill
worker and its hrtimer, the shrinker, the barrier, hotplug and debug objects.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rcukit.errors import MemoryDebugError, RcuUsageError
from rcukit.locking.locks import HeldLock, LockKind
from rcukit.mm.gfp import format_gfp
from rcukit.rcu.kvfree.core import (
    FREE_N_CHANNELS,
    KFREE_N_BATCHES,
    KfreeRcuCpu,
    KfreeRcuCpuWork,
    KvfreeCounters,
    KvfreePolicy,
    KvfreeRcuBulkData,
    KvfreeStatistics,
)
from rcukit.rcu.kvfree.variants import BlockPageSource, BlockSources
from rcukit.rcu.profiles import KvfreeProfile, get_profile
from rcukit.rcu.tree import RcuWork
from rcukit.sched.sim import Task, Timer
from rcukit.wq import DelayedWork, Work

if TYPE_CHECKING:
    from rcukit.machine import Machine
    from rcukit.mm.mm import Mm
    from rcukit.rcu.tree import RcuState
    from rcukit.trace.events import Tracer

__all__ = ["KFREE_N_BATCHES", "Bnode", "Krc", "Krwp", "KvfreeRcu", "KvfreeStatistics"]

#: A ``mon_quiet_below`` no count reaches.
_NEVER = 1 << 62
#: ``array`` typecode of a block's pointer records: an unsigned 8-byte integer. "L" where C's
#: long has 8 bytes, since storing a pointer-sized int converts faster than with "Q".
PTR_TYPECODE = "L" if array("L").itemsize == 8 else "Q"
#: x86-64's ``VMALLOC_START``: pointers at or above it are vmalloc'ed (``is_vmalloc_addr``).
VMALLOC_START = 0xFFFFC90000000000


class _KrcWork(DelayedWork):
    """A delayed work that knows its ``krcp`` (container_of in the kernel)."""

    __slots__ = ("krcp",)

    def __init__(self, name: str, func: Any, krcp: Krc) -> None:
        super().__init__(name, func)
        self.krcp = krcp


class Bnode(KvfreeRcuBulkData):
    """A ``kvfree_rcu_bulk_data`` block: one page of pointer records (a preallocated array)."""

    __slots__ = ("nr_records", "page")

    def __init__(self, page: int, capacity: int) -> None:
        super().__init__(array(PTR_TYPECODE, bytes(8 * capacity)))
        self.page = page
        self.nr_records = 0

    def __len__(self) -> int:
        return self.nr_records


class _AlwaysOn:
    """Stands in for the tracer on the fast path's gate when every call must take the slow
    path anyway (debug objects, polled snapshots): one attribute test covers both reasons."""

    __slots__ = ()
    on = True


class Krwp(KfreeRcuCpuWork[Bnode]):
    """A ``kfree_rcu_cpu_work``: one batch in flight, with its ``rcu_work``."""

    __slots__ = ("krcp", "rwork")

    def __init__(self, krcp: Krc, idx: int, rwork: Any) -> None:
        super().__init__(idx, FREE_N_CHANNELS)
        self.krcp = krcp
        self.rwork = rwork


class Krc(KfreeRcuCpu[Bnode, Krwp]):
    """``struct kfree_rcu_cpu``: the core's channels and batches, plus this CPU's raw lock,
    monitor work, page-cache refill work and hrtimer."""

    def __init__(self, kv: KvfreeRcu, cpu: int) -> None:
        super().__init__(FREE_N_CHANNELS, [])
        k = kv.kernel
        self.cpu = cpu
        self.lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        self.held = HeldLock(self.lock, "kvfree_call_rcu", True, True)
        #: ``bkvcache``: spare block pages (addresses).
        self.cache: list[int] = []
        self.monitor = _KrcWork(f"kfree_rcu_monitor/{cpu}", kv._monitor_fn, self)
        self.monitor_todo = False
        #: While ``count`` stays below this, ``_arm_monitor`` would return at once: the monitor
        #: is queued, or its timer fires within a tick, or (kick mode) fires later but the
        #: count has not reached a block yet. Set by ``_arm_monitor``; 0 (check) whenever
        #: anything else changes the monitor's state.
        self.mon_quiet_below = 0
        self.krw = [Krwp(self, i, kv._new_rcu_work(self, i)) for i in range(KFREE_N_BATCHES)]
        self.page_cache_work = _KrcWork(
            f"fill_page_cache_func/{cpu}", kv.fill_page_cache_func, self
        )
        self.work_in_progress = False
        self.backoff_page_cache_fill = False
        self.hrtimer = Timer(
            f"schedule_page_work_fn/{cpu}", lambda _t: kv._page_work_timer(self)
        )
        self.initialized = True


class _KrwpWork(RcuWork):
    """``krwp->rcu_work``: the reclaim of one batch after its grace period."""

    __slots__ = ("idx", "krcp")

    def __init__(self, name: str, func: Any, krcp: Krc, idx: int) -> None:
        super().__init__(name, func)
        self.krcp = krcp
        self.idx = idx


class KvfreeRcu:
    """The kvfree_rcu() subsystem of one kernel (``kernel.kvfree``).

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
        )
        self.drain_jiffies = self.profile.drain_jiffies(cfg.hz)
        self.wq = kernel.system_wq
        self.krcs = [Krc(self, c) for c in range(cfg.nr_cpus)]
        c = cfg.cost
        self._lock_ns = c.raw_lock_ns
        self._store_ns = c.kvfree_store_ns
        self._fast_ns = c.raw_lock_ns + c.kvfree_store_ns
        self._kick = self.policy.kick
        self._tick_ns = cfg.tick_ns
        self._polled = self.policy.polled_snapshots
        self._slab_of = mm.slab._slab_of
        self._page_offset = mm.page_offset
        self._page_shift = mm.slab.page_shift
        self.debug_objects = cfg.kvfree.debug_objects
        self._tracer = kernel.tracer
        #: Everything but the plain "block has room" case takes the modelled slow path.
        self._slow = self.debug_objects or self._polled
        #: The fast path's gate: ``.on`` means "take the slow path" (tracing, or ``_slow``).
        self._gate: Tracer | _AlwaysOn = _AlwaysOn() if self._slow else kernel.tracer
        #: ptr -> GP cookie at queue time (CONFIG_DEBUG_OBJECTS_RCU_HEAD-style checking).
        self._debug_pending: dict[int, int] = {}
        #: Every count, live (the fast path bumps one per call: see KvfreeCounters).
        self.counters = KvfreeCounters()
        #: (time_ns, pending objects, pending block pages) sampled at monitor and reclaim runs.
        self.timeline: list[tuple[int, int, int]] = []
        self.freed_listeners: list[Callable[[int], None]] = []

    @property
    def pending(self) -> int:
        """Objects queued and not yet freed."""
        return self.counters.pending_total

    # -- boot --------------------------------------------------------------------------------
    def start(self) -> None:
        if self.policy.boot_prefill and self.policy.min_cached:
            # v5.9's kfree_rcu_batch_init() fills each CPU's cache before the scheduler runs:
            # boot memory, charged to no task.
            for krcp in self.krcs:
                for _ in range(self.policy.min_cached):
                    pfn = self.mm.alloc_pages_early()
                    if pfn is None:
                        break
                    krcp.cache.append(self.mm.page_address(pfn))
        self.shrinker = self.mm.register_shrinker(
            "kfree_rcu", self.kfree_rcu_shrink_count, self.kfree_rcu_shrink_scan
        )
        self.rcu.add_hotplug_callback(self._hotplug)

    def _new_rcu_work(self, krcp: Krc, idx: int) -> _KrwpWork:
        return _KrwpWork(f"kfree_rcu_work/{krcp.cpu}.{idx}", self.kfree_rcu_work, krcp, idx)

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
                self.kernel.locks.might_sleep(task, "kvfree_call_rcu")
            ctr.fast_single += 1
        else:
            slab = self._slab_of.get((ptr - self._page_offset) >> self._page_shift)
            off = head - ptr
            if slab is None or not 0 <= off < slab.cache.size:
                self._check_head(ptr, head)
            ctr.fast_double += 1
        cpu = task.cpu
        krcp = self.krcs[cpu.id]
        chan = krcp.bulk[0]
        if chan and not (self._gate.on or ptr >= VMALLOC_START):
            bnode = chan[-1]
            n = bnode.nr_records
            if n != self.capacity:
                # krc_this_cpu_lock() ... store ... krc_this_cpu_unlock(): a raw lock with IRQs
                # off can never be an invalid wait context and nothing in between can sleep,
                # so the lock model has nothing to check here; its cost is charged all the same.
                bnode.records[n] = ptr
                bnode.nr_records = n + 1
                count = krcp.count + 1
                krcp.count = count
                t = cpu.local_ns + self._fast_ns
                cpu.local_ns = t
                # schedule_delayed_monitor_work() on every call; it nearly always finds the
                # monitor armed already, which the last call worked out (mon_quiet_below)
                if count >= krcp.mon_quiet_below:
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

    async def kvfree_call_rcu(self, task: Task, head: int | None, ptr: int) -> None:
        """``kvfree_call_rcu(head, ptr)`` (the v6.3 argument order)."""
        await self.kvfree_rcu(task, ptr, head)

    def _check_head(self, ptr: int, head: int) -> None:
        if not 0 <= head - ptr < self._object_size(ptr):
            raise RcuUsageError(
                f"kvfree_rcu(ptr=0x{ptr:x}, head=0x{head:x}): the rcu_head is not inside the "
                f"object (allowed: ptr <= head < ptr + ksize(ptr))"
            )

    async def _kvfree_slow(self, task: Task, head: int | None, ptr: int) -> None:
        """The full path: a new block, the fallbacks, tracing, debug objects, polled snaps."""
        cpu = task.cpu
        t0 = cpu.local_ns
        single = head is None
        ctr = self.counters
        ctr.slow_calls += 1
        if single:
            ctr.slow_single += 1
        if ptr >= VMALLOC_START:
            ctr.queued_vmalloc += 1
        if self.debug_objects:
            self._debug_queue(task, ptr)
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
            bnode = await self._new_block(task, krcp, idx, single)
            ok = bnode is not None
            # The v5.13+ direct allocation may sleep and the task migrate (CPU hot-unplug):
            # _new_block re-took the *same* krcp's lock, as current kernels do, so keep it.
            cpu = task.cpu
        if bnode is not None:
            bnode.records[bnode.nr_records] = ptr
            bnode.nr_records += 1
            cpu.local_ns += self._store_ns
            if self._polled:
                bnode.gp_snap = self.rcu.get_state_synchronize_rcu(task)
        elif not single:
            if krcp.head is None:
                krcp.head = array("Q")
            krcp.head.append(ptr)
            ctr.fallback_rcu_head += 1
            if self._polled:
                krcp.head_gp_snap = self.rcu.get_state_synchronize_rcu(task)
        if ok or not single:
            krcp.count += 1
            ctr.pending += 1
            self._arm_monitor(task, krcp)
        if self._tracer.on:
            self.kernel.trace(
                task, "rcu_kvfree_callback",
                f"rcu_preempt rhp=0x{head or ptr:x} func=0x{(head or ptr) - ptr:x} "
                f"{krcp.krc_count()}",
            )
        self._unlock(task, krcp)
        if not ok and single:
            # Head-less fallback: "can be used from might_sleep() context only".
            ctr.fallback_synchronize += 1
            await self.rcu.synchronize_rcu(task)
            if self.debug_objects:
                self._debug_free(ptr)
            await self.mm.kvfree(task, ptr)
            ctr.pending += 1
            self._freed(1)
        lat = task.cpu.local_ns - t0
        ctr.latency[lat] = ctr.latency.get(lat, 0) + 1
        if task.cpu.local_ns >= task.cpu.next_tick_ns:
            await task.preempt_point()

    def _object_size(self, ptr: int) -> int:
        if ptr >= VMALLOC_START:
            return int(self.mm.vmap.area_size(ptr))
        return int(self.mm.slab.object_size(ptr))

    def _unlock(self, task: Task, krcp: Krc) -> None:
        held = task.held_locks
        if held and held[-1] is krcp.held:
            held.pop()
        else:
            held.remove(krcp.held)
        task.preempt_count -= 1
        task.irqs_disabled -= 1

    def _relock(self, task: Task, krcp: Krc) -> None:
        task.irqs_disabled += 1
        task.preempt_count += 1
        task.held_locks.append(krcp.held)
        task.cpu.local_ns += self._lock_ns

    async def _new_block(self, task: Task, krcp: Krc, idx: int, can_alloc: bool) -> Bnode | None:
        """Attach a fresh block to channel ``idx``; None means "use the fallback"."""
        if not krcp.initialized:
            return None
        ctr = self.counters
        page: int | None = krcp.get_cached_bnode()
        if page is not None:
            ctr.blocks_from_cache += 1
        else:
            pol = self.policy
            attempted = False
            if can_alloc and pol.single_arg_direct_alloc:
                # v5.13+: drop the lock, allocate as a sleepable context, re-take it.
                self._unlock(task, krcp)
                attempted = True
                page = await self.mm.get_free_page(task, pol.refill_gfp)
                self._relock(task, krcp)
            elif pol.alloc_under_lock:
                if self.variant.defers_to_worker:
                    self._run_page_cache_worker(task, krcp)
                else:
                    attempted = True
                    page = await self.variant.get_page(task, self.mm)
            if attempted:
                ctr.block_alloc_attempts += 1
                if page is None:
                    ctr.block_alloc_failures += 1
            if page is None:
                if pol.refill_worker:
                    self._run_page_cache_worker(task, krcp)
                return None
        bnode = Bnode(page, self.capacity)
        krcp.bulk[idx].append(bnode)
        ctr.note_block()
        return bnode

    def _arm_monitor(self, task: Task, krcp: Krc) -> None:
        self.schedule_delayed_monitor_work(task, krcp)
        krcp.mon_quiet_below = self._monitor_quiet_below(task, krcp)

    def _monitor_quiet_below(self, task: Task, krcp: Krc) -> int:
        """The count below which :meth:`schedule_delayed_monitor_work` has nothing to do, as
        long as nobody else touches the monitor (whoever does resets ``krcp.mon_quiet_below``).

        Time only brings the timer closer, and a timer that fires queues the work; both keep
        "nothing to do" true. The work starting to run, a shrinker or hot-unplug pulling it in,
        and the barrier cancelling it are the changes that need a fresh look.
        """
        if not self._kick:
            return _NEVER if krcp.monitor_todo else 0
        mon = krcp.monitor
        if mon.queued:
            return _NEVER
        timer = mon.timer
        if not timer.pending:
            return 0
        if timer.expires_ns - task.cpu.local_ns <= self._tick_ns:
            return _NEVER
        return self.capacity

    def schedule_delayed_monitor_work(self, task: Task, krcp: Krc) -> None:
        """Arm the monitor: ``KFREE_DRAIN_JIFFIES``, or (v6.1 kick) 1 jiffy once a block's worth
        is queued, pulling a pending monitor in only if that is sooner than its timer."""
        mon = krcp.monitor
        if self._kick:
            if mon.queued:
                return
            timer = mon.timer
            kick = self.policy.kick_now(krcp.count)
            if timer.pending:
                if not kick:
                    return  # the delay would be KFREE_DRAIN_JIFFIES: never sooner
                if timer.expires_ns - task.cpu.local_ns <= self._tick_ns:
                    return
                self.wq.mod_delayed_work(task, mon, 1)
            else:
                self.wq.queue_delayed_work(task, mon, 1 if kick else self.drain_jiffies)
        elif not krcp.monitor_todo:
            krcp.monitor_todo = True
            self.wq.queue_delayed_work(task, mon, self.drain_jiffies)

    # -- the page cache ------------------------------------------------------------------------
    def _run_page_cache_worker(self, task: Task, krcp: Krc) -> None:
        """v5.11+: an hrtimer (so queue_work is not called under the raw lock) kicks the refill."""
        if krcp.work_in_progress:
            return
        krcp.work_in_progress = True
        sim = self.kernel.sim
        sim.arm_timer(krcp.hrtimer, task.cpu, task.now_ns)

    def _page_work_timer(self, krcp: Krc) -> None:
        k = self.kernel
        if self.policy.shrinker_backoff and krcp.backoff_page_cache_fill:
            delay = max(
                1, k.config.kvfree.rcu_delay_page_cache_fill_msec * k.config.hz // 1000
            )
            self.wq.queue_delayed_work(None, krcp.page_cache_work, delay, cpu=krcp.cpu)
        else:
            k.system_highpri_wq.queue_work(None, krcp.page_cache_work, cpu=krcp.cpu)

    async def fill_page_cache_func(self, task: Task, work: Work) -> None:
        """``fill_page_cache_func``: allocate in a clean context, stop at the first failure."""
        assert isinstance(work, _KrcWork)
        krcp = work.krcp
        ctr = self.counters
        nr_pages = 1 if krcp.backoff_page_cache_fill else self.policy.min_cached
        for _ in range(len(krcp.cache), nr_pages):
            ctr.block_alloc_attempts += 1
            page = await self.mm.get_free_page(task, self.policy.refill_gfp)
            if page is None:
                ctr.block_alloc_failures += 1
                break
            if not krcp.put_cached_bnode(page, self.policy.min_cached):
                await self.mm.free_page(task, page)
                break
        krcp.work_in_progress = False
        krcp.backoff_page_cache_fill = False

    # -- the monitor -----------------------------------------------------------------------------
    async def _monitor_fn(self, task: Task, work: Work) -> None:
        assert isinstance(work, _KrcWork)
        await self.kfree_rcu_monitor(task, work.krcp)

    async def kfree_rcu_monitor(self, task: Task, krcp: Krc) -> None:
        """``kfree_rcu_monitor``: free what is already safe (v6.3), detach the rest into a batch."""
        k = self.kernel
        krcp.mon_quiet_below = 0  # the work left the queue to run
        self._relock(task, krcp)
        ready: list[tuple[int, list[Bnode]]] = []
        ready_head: array[int] | None = None
        if self._polled:
            ready, ready_head = self.kvfree_rcu_drain_ready(krcp)
        self.kvfree_rcu_queue_batch(task, krcp)
        if krcp.need_offload_krc():
            if self._kick:
                self._arm_monitor(task, krcp)
            else:
                krcp.monitor_todo = True
                self.wq.queue_delayed_work(task, krcp.monitor, self.drain_jiffies)
        else:
            krcp.monitor_todo = False
        krcp.mon_quiet_below = 0
        self._unlock(task, krcp)
        if ready or ready_head is not None:
            ctr = self.counters
            for idx, nodes in ready:
                for bnode in nodes:
                    ctr.freed_early_polled += bnode.nr_records
                    await self._free_block(task, krcp, idx, bnode)
            if ready_head is not None:
                ctr.freed_early_polled += len(ready_head)
                await self._free_list(task, ready_head)
        self._sample_timeline(task)
        if k.tracer.on:
            k.trace(task, "kfree_rcu_monitor", f"cpu={krcp.cpu} pending={krcp.krc_count()}")

    def kvfree_rcu_drain_ready(
        self, krcp: Krc
    ) -> tuple[list[tuple[int, list[Bnode]]], array[int] | None]:
        """``kvfree_rcu_drain_ready``: oldest blocks first, stop at the first not yet safe."""
        return krcp.kvfree_rcu_drain_ready(self.rcu.poll_state_synchronize_rcu)

    def kvfree_rcu_queue_batch(self, task: Task, krcp: Krc) -> bool:
        """Detach channels into free ``krwp`` slots and hand each to ``queue_rcu_work``."""
        rcu = self.rcu
        return krcp.kvfree_rcu_queue_batch(
            self.policy,
            self.counters,
            lambda: rcu.get_state_synchronize_rcu(task),
            lambda krwp: rcu.queue_rcu_work(task, self.wq, krwp.rwork),
        )

    # -- reclaim after the grace period --------------------------------------------------------
    async def kfree_rcu_work(self, task: Task, work: Work) -> None:
        """``kfree_rcu_work``: one bulk call per block, the list one by one, spare pages back."""
        assert isinstance(work, _KrwpWork)
        krcp = work.krcp
        krwp = krcp.krw[work.idx]
        self.counters.grace_periods_waited += 1
        self._relock(task, krcp)
        chans = krwp.bulk_free
        krwp.bulk_free = [[], []]
        head = krwp.head_free
        krwp.head_free = None
        self._unlock(task, krcp)
        for idx in (0, 1):
            for bnode in chans[idx]:
                await self._free_block(task, krcp, idx, bnode)
        if head is not None:
            await self._free_list(task, head)
        self._sample_timeline(task)

    def _sample_timeline(self, task: Task) -> None:
        ctr = self.counters
        self.timeline.append((task.now_ns, ctr.pending_total, ctr.blocks_in_use))

    async def _free_block(self, task: Task, krcp: Krc, idx: int, bnode: Bnode) -> None:
        k = self.kernel
        ctr = self.counters
        nr = bnode.nr_records
        # the block's own array: kfree_bulk reads it as bytes (see SlabAllocator._slab_runs)
        ptrs = bnode.records[:nr]
        if self.debug_objects:
            for p in ptrs:
                self._debug_free(p)
        if self._polled and not self.rcu.poll_state_synchronize_rcu(bnode.gp_snap):
            ctr.gp_violations += 1
        if idx == 0:
            if k.tracer.on:
                k.trace(
                    task, "rcu_invoke_kfree_bulk_callback",
                    f"rcu_preempt bulk=0x{bnode.page:x} nr_records={nr}",
                )
            await self.mm.kfree_bulk(task, ptrs)
        else:
            if self.policy.vfree_bulk:
                await self.mm.vfree_bulk(task, ptrs)
            else:
                for p in ptrs:
                    if k.tracer.on:
                        k.trace(task, "rcu_invoke_kvfree_callback",
                                f"rcu_preempt rhp=0x{p:x} func=0x0")
                    await self.mm.vfree(task, p)
        ctr.bulk_calls += 1
        ctr.records_per_block[nr] = ctr.records_per_block.get(nr, 0) + 1
        self._freed(nr)
        # put_cached_bnode(): keep the page if the cache is short, else give it back.
        ctr.blocks_in_use -= 1
        if len(krcp.cache) < self.policy.min_cached:
            self._relock(task, krcp)
            krcp.put_cached_bnode(bnode.page, self.policy.min_cached)
            self._unlock(task, krcp)
        else:
            await self.mm.free_page(task, bnode.page)
        await task.cond_resched()

    async def _free_list(self, task: Task, head: array[int]) -> None:
        """``kvfree_rcu_list``: pointer chasing through rcu_heads, one ``kvfree`` per object."""
        miss = self.kernel.config.cost.cache_miss_ns
        k = self.kernel
        for p in head.tolist():
            task.charge(miss)
            if self.debug_objects:
                self._debug_free(p)
            if k.tracer.on:
                k.trace(task, "rcu_invoke_kvfree_callback", f"rcu_preempt rhp=0x{p:x} func=0x0")
            await self.mm.kvfree(task, p)
        self._freed(len(head))
        await task.cond_resched()

    def _freed(self, n: int) -> None:
        self.counters.note_freed(n)
        for cb in self.freed_listeners:
            cb(n)

    # -- debug objects -------------------------------------------------------------------------
    def _debug_queue(self, task: Task, ptr: int) -> None:
        if ptr in self._debug_pending:
            raise MemoryDebugError(
                f"kvfree_rcu(0x{ptr:x}) from {task.comm}/{task.pid}: the object is already "
                f"queued for freeing after a grace period (double kvfree_rcu)"
            )
        self.mm.check_access(ptr, task)
        self._debug_pending[ptr] = self.rcu.get_state_synchronize_rcu(task)

    def _debug_free(self, ptr: int) -> None:
        cookie = self._debug_pending.pop(ptr, None)
        if cookie is not None and not self.rcu.poll_state_synchronize_rcu(cookie):
            self.counters.gp_violations += 1

    # -- shrinker, barrier, hotplug ------------------------------------------------------------
    def kfree_rcu_shrink_count(self, task: Task) -> int:
        """``kfree_rcu_shrink_count``: queued objects plus cached pages; (v5.14+) back off."""
        total = 0
        backoff = self.policy.shrinker_backoff
        for krcp in self.krcs:
            total += krcp.krc_count() + len(krcp.cache)
            if backoff:
                krcp.backoff_page_cache_fill = True
        return total

    async def kfree_rcu_shrink_scan(self, task: Task, nr_to_scan: int) -> int:
        """``kfree_rcu_shrink_scan``: drain page caches and pull every CPU's monitor in, on the
        owning CPU."""
        freed = 0
        for krcp in self.krcs:
            if nr_to_scan <= 0:
                break
            count = krcp.krc_count()
            if self.policy.shrinker_backoff and krcp.cache:
                count += len(krcp.cache)
                self.wq.queue_work(task, Work(f"drain_page_cache/{krcp.cpu}",
                                              self._drain_cache_fn), cpu=krcp.cpu)
            if krcp.need_offload_krc():
                self.wq.mod_delayed_work(task, krcp.monitor, 0, cpu=krcp.cpu)
                krcp.mon_quiet_below = 0
            freed += count
            nr_to_scan -= count
        return freed

    async def _drain_cache_fn(self, task: Task, work: Work) -> None:
        krcp = self.krcs[task.cpu.id]
        self._relock(task, krcp)
        pages = krcp.cache
        krcp.cache = []
        self._unlock(task, krcp)
        self.counters.cache_pages_drained += len(pages)
        for page in pages:
            await self.mm.free_page(task, page)

    async def kvfree_rcu_barrier(self, task: Task) -> None:
        """Return only when every object queued before the call has been freed (v6.12).

        Each CPU's part runs on that CPU (a work item): queue its batches, waiting for batches
        in flight where both ``krwp`` slots are busy, then flush them.
        """
        if task.rcu_read_nesting:
            raise RcuUsageError("kvfree_rcu_barrier() inside an RCU read-side critical section")
        self.kernel.locks.might_sleep(task, "kvfree_rcu_barrier")
        await task.sync()
        works = []
        for krcp in self.krcs:
            # Every possible CPU, offline ones too: their batches may still be in flight
            # (kernel.md 1.7, step 2 flushes both krw slots of every CPU).
            w = Work(f"kvfree_rcu_barrier/{krcp.cpu}", self._barrier_cpu_fn)
            self.wq.queue_work(task, w, cpu=self._owner_cpu(krcp))
            works.append(w)
        for w in works:
            await self.wq.flush_work(task, w)

    def _owner_cpu(self, krcp: Krc) -> int:
        if self.kernel.cpus[krcp.cpu].online:
            return krcp.cpu
        return next(c.id for c in self.kernel.cpus if c.online)

    async def _barrier_cpu_fn(self, task: Task, work: Work) -> None:
        krcp = self.krcs[int(work.name.rsplit("/", 1)[1])]
        while True:
            self._relock(task, krcp)
            if not krcp.need_offload_krc():
                self._unlock(task, krcp)
                break
            queued = self.kvfree_rcu_queue_batch(task, krcp)
            self._unlock(task, krcp)
            if queued:
                continue
            for krwp in krcp.krw:
                await self.rcu.flush_rcu_work(task, krwp.rwork)
        await self.wq.cancel_delayed_work_sync(task, krcp.monitor)
        krcp.monitor_todo = False
        krcp.mon_quiet_below = 0
        for krwp in krcp.krw:
            await self.rcu.flush_rcu_work(task, krwp.rwork)

    def _hotplug(self, task: Task, cpu_id: int, online: bool) -> None:
        """An offlined CPU's krcp still drains: its monitor moves to an online CPU's kworker."""
        if online:
            return
        krcp = self.krcs[cpu_id]
        if krcp.need_offload_krc():
            self.wq.mod_delayed_work(task, krcp.monitor, 0, cpu=self._owner_cpu(krcp))
            krcp.mon_quiet_below = 0

    # -- results -------------------------------------------------------------------------------
    def statistics(self) -> KvfreeStatistics:
        return self.counters.statistics(
            cached_pages=sum(len(k.cache) for k in self.krcs), fast_ns=self._fast_ns
        )
