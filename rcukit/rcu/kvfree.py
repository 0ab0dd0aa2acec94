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
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs

from rcukit.errors import MemoryDebugError, RcuUsageError
from rcukit.locking.locks import HeldLock, LockKind
from rcukit.mm.alloc_core import KVFREE_REFILL_GFP
from rcukit.mm.gfp import format_gfp
from rcukit.rcu.profiles import KvfreeProfile, get_profile
from rcukit.rcu.tree import RcuWork
from rcukit.sched.sim import Task, Timer
from rcukit.wq import DelayedWork, Work

if TYPE_CHECKING:
    from rcukit.kernel import Kernel
    from rcukit.trace.events import Tracer

KFREE_N_BATCHES = 2
FREE_N_CHANNELS = 2
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


class Bnode:
    """A ``kvfree_rcu_bulk_data`` block: one page of pointer records."""

    __slots__ = ("gp_snap", "nr_records", "page", "records")

    def __init__(self, page: int, capacity: int) -> None:
        self.page = page
        self.records = array(PTR_TYPECODE, bytes(8 * capacity))
        self.nr_records = 0
        self.gp_snap = 0


class _AlwaysOn:
    """Stands in for the tracer on the fast path's gate when every call must take the slow
    path anyway (debug objects, polled snapshots): one attribute test covers both reasons."""

    __slots__ = ()
    on = True


class Krwp:
    """A ``kfree_rcu_cpu_work``: one batch in flight (``KFREE_N_BATCHES`` per CPU)."""

    __slots__ = ("bulk_free", "head_free", "head_free_gp_snap", "idx", "krcp", "rwork")

    def __init__(self, krcp: Krc, idx: int, rwork: Any) -> None:
        self.krcp = krcp
        self.idx = idx
        self.bulk_free: list[list[Bnode]] = [[], []]
        self.head_free: array[int] | None = None
        self.head_free_gp_snap = 0
        self.rwork = rwork

    def busy(self) -> bool:
        return bool(self.bulk_free[0] or self.bulk_free[1] or self.head_free is not None)


class Krc:
    """``struct kfree_rcu_cpu``: one CPU's channels, cache, batches and monitor."""

    def __init__(self, kv: KvfreeRcu, cpu: int) -> None:
        k = kv.kernel
        self.cpu = cpu
        self.lock = k.new_lock("krc.lock", LockKind.RAW_SPINLOCK)
        self.held = HeldLock(self.lock, "kvfree_call_rcu", True, True)
        #: ``bkvhead[]`` / ``bulk_head[]``: newest block last.
        self.bulk: list[list[Bnode]] = [[], []]
        #: The ``rcu_head`` list channel (head pointers; the rcu_head lives inside the object).
        self.head: array[int] | None = None
        self.head_gp_snap = 0
        self.count = 0
        self.cache: list[int] = []
        self.monitor = _KrcWork(f"kfree_rcu_monitor/{cpu}", kv._monitor_fn, self)
        self.monitor_todo = False
        #: While ``count`` stays below this, ``_arm_monitor`` would return at once: the monitor
        #: is queued, or its timer fires within a tick, or (kick mode) fires later but the
        #: count has not reached a block yet. Set by ``_arm_monitor``; 0 (check) whenever
        #: anything else changes the monitor's state.
        self.mon_quiet_below = 0
        self.krw = [Krwp(self, i, kv._new_rcu_work(self, i)) for i in range(KFREE_N_BATCHES)]
        self.page_cache_work = _KrcWork(f"fill_page_cache_func/{cpu}", kv._fill_cache_fn, self)
        self.work_in_progress = False
        self.backoff_page_cache_fill = False
        self.hrtimer = Timer(
            f"schedule_page_work_fn/{cpu}", lambda _t: kv._page_work_timer(self)
        )
        self.initialized = True

    def krc_count(self) -> int:
        """``krc_count()``: objects queued here and not yet handed to a batch."""
        n = len(self.head) if self.head is not None else 0
        for chan in self.bulk:
            for b in chan:
                n += b.nr_records
        return n

    def need_offload(self) -> bool:
        return bool(self.bulk[0] or self.bulk[1] or self.head is not None)


@attrs.frozen
class KvfreeStatistics:
    """A snapshot of kvfree_rcu()'s accounting (all counts since boot)."""

    calls: int
    calls_single: int
    calls_double: int
    queued_slab: int
    queued_vmalloc: int
    queued_list: int
    block_alloc_attempts: int
    block_alloc_failures: int
    blocks_from_cache: int
    blocks_in_use: int
    cached_pages: int
    fallback_rcu_head: int
    fallback_synchronize: int
    batches_queued: int
    grace_periods_waited: int
    freed_early_polled: int
    objects_freed: int
    pending: int
    pending_peak: int
    pages_peak: int
    bulk_calls: int
    records_per_block: dict[int, int]
    latency_ns: dict[int, int]
    gp_violations: int

    @property
    def records_per_block_mean(self) -> float:
        n = sum(self.records_per_block.values())
        if not n:
            return 0.0
        return sum(k * v for k, v in self.records_per_block.items()) / n

    def latency_percentile(self, p: float) -> int:
        total = sum(self.latency_ns.values())
        if not total:
            return 0
        want = p * total
        seen = 0
        for ns in sorted(self.latency_ns):
            seen += self.latency_ns[ns]
            if seen >= want:
                return ns
        return max(self.latency_ns)


class _KrwpWork(RcuWork):
    """``krwp->rcu_work``: the reclaim of one batch after its grace period."""

    __slots__ = ("idx", "krcp")

    def __init__(self, name: str, func: Any, krcp: Krc, idx: int) -> None:
        super().__init__(name, func)
        self.krcp = krcp
        self.idx = idx


class KvfreeRcu:
    """The kvfree_rcu() subsystem of one kernel (``kernel.kvfree``)."""

    def __init__(self, kernel: Kernel) -> None:
        self.kernel = kernel
        cfg = kernel.config
        self.profile: KvfreeProfile = get_profile(cfg.kvfree.profile)
        self.mm = kernel.mm
        self.rcu = kernel.rcu
        self.variant = kernel.mm.variant(cfg.kvfree.variant)
        self.variant_gfp_text = format_gfp(self.variant.gfp)
        self.capacity = self.profile.block_capacity(
            cfg.page_size, cfg.pointer_size, cfg.kvfree.header
        )
        # The page-cache variant is v5.11's answer grafted onto the profile: its cache holds
        # v5.11's five pages and is refilled with the flags the kernel settled on.
        defers = self.variant.defers_to_worker
        default_cached = max(self.profile.min_cached_objs, 5) if defers else (
            self.profile.min_cached_objs
        )
        self.min_cached = (
            cfg.kvfree.rcu_min_cached_objs
            if cfg.kvfree.rcu_min_cached_objs is not None
            else default_cached
        )
        self.refill_gfp = (
            self.profile.refill_gfp if self.profile.refill_worker or not defers
            else KVFREE_REFILL_GFP
        )
        self.drain_jiffies = self.profile.drain_jiffies(cfg.hz)
        self.wq = kernel.system_wq
        self.krcs = [Krc(self, c) for c in range(cfg.nr_cpus)]
        c = cfg.cost
        self._lock_ns = c.raw_lock_ns
        self._store_ns = c.kvfree_store_ns
        self._fast_ns = c.raw_lock_ns + c.kvfree_store_ns
        self._kick = self.profile.kick
        self._tick_ns = cfg.tick_ns
        self._polled = self.profile.polled_snapshots
        self._slab_of = kernel.mm.slab._slab_of
        self._page_offset = kernel.mm.page_offset
        self._page_shift = kernel.mm.slab.page_shift
        self.debug_objects = cfg.kvfree.debug_objects
        self._tracer = kernel.tracer
        #: Everything but the plain "block has room" case takes the modelled slow path.
        self._slow = self.debug_objects or self._polled
        #: The fast path's gate: ``.on`` means "take the slow path" (tracing, or ``_slow``).
        self._gate: Tracer | _AlwaysOn = _AlwaysOn() if self._slow else kernel.tracer
        #: ptr -> GP cookie at queue time (CONFIG_DEBUG_OBJECTS_RCU_HEAD-style checking).
        self._debug_pending: dict[int, int] = {}
        # accounting
        # Calls by path and form: the fast path bumps one counter per call (see the properties).
        self._fast_single = 0
        self._fast_double = 0
        self.slow_calls = 0
        self._slow_single = 0
        self.queued_vmalloc = 0
        self.block_alloc_attempts = 0
        self.block_alloc_failures = 0
        self.blocks_from_cache = 0
        self.blocks_in_use = 0
        self.fallback_rcu_head = 0
        self.fallback_synchronize = 0
        self.batches_queued = 0
        self.grace_periods_waited = 0
        self.freed_early_polled = 0
        self.objects_freed = 0
        #: Objects queued and not yet freed, less the fast path's (``pending`` adds them).
        self._pending_slow = 0
        self.pending_peak = 0
        self.pages_peak = 0
        self.bulk_calls = 0
        self.records_per_block: dict[int, int] = {}
        self.latency: dict[int, int] = {}
        self.gp_violations = 0
        #: Pages the shrinker took out of the per-CPU caches (``drain_page_cache``).
        self.cache_pages_drained = 0
        #: (time_ns, pending objects, pending block pages) sampled at monitor and reclaim runs.
        self.timeline: list[tuple[int, int, int]] = []
        self.freed_listeners: list[Callable[[int], None]] = []

    @property
    def fast_calls(self) -> int:
        """Calls that found room in the current block (the inline path of :meth:`kvfree_rcu`)."""
        return self._fast_single + self._fast_double

    @property
    def calls_single(self) -> int:
        """Head-less ``kvfree_rcu(ptr)`` calls."""
        return self._fast_single + self._slow_single

    @property
    def pending(self) -> int:
        """Objects queued and not yet freed (the fast path only counts its calls)."""
        return self._pending_slow + self._fast_single + self._fast_double

    # -- boot --------------------------------------------------------------------------------
    def start(self) -> None:
        k = self.kernel
        if self.profile.boot_prefill and self.min_cached:
            # v5.9's kfree_rcu_batch_init() fills each CPU's cache before the scheduler runs:
            # boot memory, charged to no task.
            for krcp in self.krcs:
                for _ in range(self.min_cached):
                    pfn = self.mm.alloc_pages_early()
                    if pfn is None:
                        break
                    krcp.cache.append(self.mm.page_address(pfn))
        self.shrinker = k.mm.register_shrinker(
            "kfree_rcu", self._shrink_count, self._shrink_scan
        )
        k.rcu.add_hotplug_callback(self._hotplug)

    def _new_rcu_work(self, krcp: Krc, idx: int) -> _KrwpWork:
        return _KrwpWork(f"kfree_rcu_work/{krcp.cpu}.{idx}", self._reclaim_fn, krcp, idx)

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
        if head is None:
            # hardirq context always has irqs_disabled set, so this covers in_atomic()
            if task.preempt_count or task.irqs_disabled or task.rcu_read_nesting:
                self.kernel.locks.might_sleep(task, "kvfree_call_rcu")
            self._fast_single += 1
        else:
            slab = self._slab_of.get((ptr - self._page_offset) >> self._page_shift)
            off = head - ptr
            if slab is None or not 0 <= off < slab.cache.size:
                self._check_head(ptr, head)
            self._fast_double += 1
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
            self._fast_single -= 1
        else:
            self._fast_double -= 1
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
        self.slow_calls += 1
        if single:
            self._slow_single += 1
        if ptr >= VMALLOC_START:
            self.queued_vmalloc += 1
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
            self.fallback_rcu_head += 1
            if self._polled:
                krcp.head_gp_snap = self.rcu.get_state_synchronize_rcu(task)
        if ok or not single:
            krcp.count += 1
            self._pending_slow += 1
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
            self.fallback_synchronize += 1
            await self.rcu.synchronize_rcu(task)
            if self.debug_objects:
                self._debug_free(ptr)
            await self.mm.kvfree(task, ptr)
            self._pending_slow += 1
            self._freed(1)
        lat = task.cpu.local_ns - t0
        self.latency[lat] = self.latency.get(lat, 0) + 1
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
        page: int | None = None
        if krcp.cache:
            page = krcp.cache.pop()
            self.blocks_from_cache += 1
        else:
            prof = self.profile
            attempted = False
            if can_alloc and prof.single_arg_direct_alloc:
                # v5.13+: drop the lock, allocate as a sleepable context, re-take it.
                self._unlock(task, krcp)
                attempted = True
                page = await self.mm.get_free_page(task, prof.refill_gfp)
                self._relock(task, krcp)
            elif prof.alloc_under_lock and not (
                self.kernel.config.preempt_rt and prof.rt_skips_alloc
            ):
                if self.variant.defers_to_worker:
                    self._run_page_cache_worker(task, krcp)
                else:
                    attempted = True
                    page = await self.variant.get_page(task, self.mm)
            if attempted:
                self.block_alloc_attempts += 1
                if page is None:
                    self.block_alloc_failures += 1
            if page is None:
                if prof.refill_worker:
                    self._run_page_cache_worker(task, krcp)
                return None
        bnode = Bnode(page, self.capacity)
        krcp.bulk[idx].append(bnode)
        self.blocks_in_use += 1
        if self.blocks_in_use > self.pages_peak:
            self.pages_peak = self.blocks_in_use
        return bnode

    def _arm_monitor(self, task: Task, krcp: Krc) -> None:
        self._schedule_monitor(task, krcp)
        krcp.mon_quiet_below = self._monitor_quiet_below(task, krcp)

    def _monitor_quiet_below(self, task: Task, krcp: Krc) -> int:
        """The count below which :meth:`_schedule_monitor` has nothing to do, as long as
        nobody else touches the monitor (whoever does resets ``krcp.mon_quiet_below``).

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

    def _schedule_monitor(self, task: Task, krcp: Krc) -> None:
        mon = krcp.monitor
        if self._kick:
            # v6.1 schedule_delayed_monitor_work(): 1 jiffy once a block's worth is queued,
            # pulling a pending monitor in only if that is sooner than its timer.
            if mon.queued:
                return
            timer = mon.timer
            if timer.pending:
                if krcp.count < self.capacity:
                    return  # the delay would be KFREE_DRAIN_JIFFIES: never sooner
                if timer.expires_ns - task.cpu.local_ns <= self._tick_ns:
                    return
                self.wq.mod_delayed_work(task, mon, 1)
            else:
                delay = 1 if krcp.count >= self.capacity else self.drain_jiffies
                self.wq.queue_delayed_work(task, mon, delay)
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
        if self.profile.shrinker_backoff and krcp.backoff_page_cache_fill:
            delay = max(
                1, k.config.kvfree.rcu_delay_page_cache_fill_msec * k.config.hz // 1000
            )
            self.wq.queue_delayed_work(None, krcp.page_cache_work, delay, cpu=krcp.cpu)
        else:
            k.system_highpri_wq.queue_work(None, krcp.page_cache_work, cpu=krcp.cpu)

    async def _fill_cache_fn(self, task: Task, work: Work) -> None:
        """``fill_page_cache_func``: allocate in a clean context, stop at the first failure."""
        assert isinstance(work, _KrcWork)
        krcp = work.krcp
        nr_pages = 1 if krcp.backoff_page_cache_fill else self.min_cached
        for _ in range(len(krcp.cache), nr_pages):
            self.block_alloc_attempts += 1
            page = await self.mm.get_free_page(task, self.refill_gfp)
            if page is None:
                self.block_alloc_failures += 1
                break
            if len(krcp.cache) >= self.min_cached:
                await self.mm.free_page(task, page)
                break
            krcp.cache.append(page)
        krcp.work_in_progress = False
        krcp.backoff_page_cache_fill = False

    # -- the monitor -----------------------------------------------------------------------------
    async def _monitor_fn(self, task: Task, work: Work) -> None:
        assert isinstance(work, _KrcWork)
        await self._monitor(task, work.krcp)

    async def _monitor(self, task: Task, krcp: Krc) -> None:
        """``kfree_rcu_monitor``: free what is already safe (v6.3), detach the rest into a batch."""
        k = self.kernel
        krcp.mon_quiet_below = 0  # the work left the queue to run
        self._relock(task, krcp)
        ready: list[tuple[int, list[Bnode]]] = []
        ready_head: array[int] | None = None
        if self.profile.polled_snapshots:
            ready, ready_head = self._drain_ready(krcp)
        self._queue_batch(task, krcp)
        if krcp.need_offload():
            if self.profile.kick:
                self._arm_monitor(task, krcp)
            else:
                krcp.monitor_todo = True
                self.wq.queue_delayed_work(task, krcp.monitor, self.drain_jiffies)
        else:
            krcp.monitor_todo = False
        krcp.mon_quiet_below = 0
        self._unlock(task, krcp)
        if ready or ready_head is not None:
            for idx, nodes in ready:
                for bnode in nodes:
                    self.freed_early_polled += bnode.nr_records
                    await self._free_block(task, krcp, idx, bnode)
            if ready_head is not None:
                self.freed_early_polled += len(ready_head)
                await self._free_list(task, ready_head)
        self.timeline.append((task.now_ns, self.pending, self.blocks_in_use))
        if k.tracer.on:
            k.trace(task, "kfree_rcu_monitor", f"cpu={krcp.cpu} pending={krcp.krc_count()}")

    def _drain_ready(self, krcp: Krc) -> tuple[list[tuple[int, list[Bnode]]], array[int] | None]:
        """``kvfree_rcu_drain_ready``: oldest blocks first, stop at the first not yet safe."""
        poll = self.rcu.poll_state_synchronize_rcu
        out: list[tuple[int, list[Bnode]]] = []
        for idx in (0, 1):
            chan = krcp.bulk[idx]
            n = 0
            while n < len(chan) and poll(chan[n].gp_snap):
                n += 1
            if n:
                nodes = chan[:n]
                del chan[:n]
                out.append((idx, nodes))
        head = None
        if krcp.head is not None and poll(krcp.head_gp_snap):
            head = krcp.head
            krcp.head = None
        return out, head

    def _queue_batch(self, task: Task, krcp: Krc) -> bool:
        """Detach channels into free ``krwp`` slots and hand each to ``queue_rcu_work``."""
        queued = False
        for krwp in krcp.krw:
            if self.profile.one_batch_per_run and krwp.busy():
                continue
            if not krcp.need_offload():
                break
            moved = False
            for j in (0, 1):
                if not krwp.bulk_free[j] and krcp.bulk[j]:
                    krwp.bulk_free[j] = krcp.bulk[j]
                    krcp.bulk[j] = []
                    moved = True
            if krwp.head_free is None and krcp.head is not None:
                krwp.head_free = krcp.head
                krwp.head_free_gp_snap = self.rcu.get_state_synchronize_rcu(task)
                krcp.head = None
                moved = True
            if moved:
                krcp.count = 0
                if self.rcu.queue_rcu_work(task, self.wq, krwp.rwork):
                    self.batches_queued += 1
                    queued = True
                if self.profile.one_batch_per_run:
                    break
        return queued

    # -- reclaim after the grace period --------------------------------------------------------
    async def _reclaim_fn(self, task: Task, work: Work) -> None:
        """``kfree_rcu_work``: one bulk call per block, the list one by one, spare pages back."""
        assert isinstance(work, _KrwpWork)
        krcp = work.krcp
        krwp = krcp.krw[work.idx]
        self.grace_periods_waited += 1
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
        self.timeline.append((task.now_ns, self.pending, self.blocks_in_use))

    async def _free_block(self, task: Task, krcp: Krc, idx: int, bnode: Bnode) -> None:
        k = self.kernel
        nr = bnode.nr_records
        # the block's own array: kfree_bulk reads it as bytes (see SlabAllocator._slab_runs)
        ptrs = bnode.records[:nr]
        if self.debug_objects:
            for p in ptrs:
                self._debug_free(p)
        if self.profile.polled_snapshots and not self.rcu.poll_state_synchronize_rcu(
            bnode.gp_snap
        ):
            self.gp_violations += 1
        if idx == 0:
            if k.tracer.on:
                k.trace(
                    task, "rcu_invoke_kfree_bulk_callback",
                    f"rcu_preempt bulk=0x{bnode.page:x} nr_records={nr}",
                )
            await self.mm.kfree_bulk(task, ptrs)
        else:
            if self.profile.vfree_bulk:
                await self.mm.vfree_bulk(task, ptrs)
            else:
                for p in ptrs:
                    if k.tracer.on:
                        k.trace(task, "rcu_invoke_kvfree_callback",
                                f"rcu_preempt rhp=0x{p:x} func=0x0")
                    await self.mm.vfree(task, p)
        self.bulk_calls += 1
        self.records_per_block[nr] = self.records_per_block.get(nr, 0) + 1
        self._freed(nr)
        # put_cached_bnode(): keep the page if the cache is short, else give it back.
        self.blocks_in_use -= 1
        if len(krcp.cache) < self.min_cached:
            self._relock(task, krcp)
            krcp.cache.append(bnode.page)
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
        # pending only falls here, so its peak is always seen just before a free
        pending = self._pending_slow + self._fast_single + self._fast_double
        if pending > self.pending_peak:
            self.pending_peak = pending
        self.objects_freed += n
        self._pending_slow -= n
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
            self.gp_violations += 1

    # -- shrinker, barrier, hotplug ------------------------------------------------------------
    def _shrink_count(self, task: Task) -> int:
        total = 0
        for krcp in self.krcs:
            total += krcp.krc_count() + len(krcp.cache)
            if self.profile.shrinker_backoff:
                krcp.backoff_page_cache_fill = True
        return total

    async def _shrink_scan(self, task: Task, nr_to_scan: int) -> int:
        """Drain page caches and pull every CPU's monitor in, on the owning CPU."""
        freed = 0
        for krcp in self.krcs:
            if nr_to_scan <= 0:
                break
            count = krcp.krc_count()
            if self.profile.shrinker_backoff and krcp.cache:
                count += len(krcp.cache)
                self.wq.queue_work(task, Work(f"drain_page_cache/{krcp.cpu}",
                                              self._drain_cache_fn), cpu=krcp.cpu)
            if krcp.need_offload():
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
        self.cache_pages_drained += len(pages)
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
            if not krcp.need_offload():
                self._unlock(task, krcp)
                break
            queued = self._queue_batch(task, krcp)
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
        if krcp.need_offload():
            self.wq.mod_delayed_work(task, krcp.monitor, 0, cpu=self._owner_cpu(krcp))
            krcp.mon_quiet_below = 0

    # -- results -------------------------------------------------------------------------------
    def statistics(self) -> KvfreeStatistics:
        calls = self.fast_calls + self.slow_calls
        latency = dict(self.latency)
        if self.fast_calls:
            latency[self._fast_ns] = latency.get(self._fast_ns, 0) + self.fast_calls
        # Every call queued its object somewhere, except head-less calls that freed inline.
        queued = calls - self.fallback_synchronize
        return KvfreeStatistics(
            calls=calls,
            calls_single=self.calls_single,
            calls_double=calls - self.calls_single,
            queued_slab=queued - self.queued_vmalloc - self.fallback_rcu_head,
            queued_vmalloc=self.queued_vmalloc,
            queued_list=self.fallback_rcu_head,
            block_alloc_attempts=self.block_alloc_attempts,
            block_alloc_failures=self.block_alloc_failures,
            blocks_from_cache=self.blocks_from_cache,
            blocks_in_use=self.blocks_in_use,
            cached_pages=sum(len(k.cache) for k in self.krcs),
            fallback_rcu_head=self.fallback_rcu_head,
            fallback_synchronize=self.fallback_synchronize,
            batches_queued=self.batches_queued,
            grace_periods_waited=self.grace_periods_waited,
            freed_early_polled=self.freed_early_polled,
            objects_freed=self.objects_freed,
            pending=self.pending,
            pending_peak=max(self.pending_peak, self.pending),
            pages_peak=self.pages_peak,
            bulk_calls=self.bulk_calls,
            records_per_block=dict(sorted(self.records_per_block.items())),
            latency_ns=dict(sorted(latency.items())),
            gp_violations=self.gp_violations,
        )
