"""The clock-free kvfree_rcu() engine: krcp, blocks, batches, the monitor's decisions, counters.

One engine, two hosts (kernel.md section 1; ``mm/slab_common.c`` from v6.14, ``kernel/rcu/tree.c``
before): the simulated kernel (:mod:`rcukit.rcu.kvfree.sim`) adds ``krcp->lock``, per-CPU
virtual time, workqueues and costs; the application domain (:mod:`rcukit.app.kvfree`) adds Trio's
clock, backpressure grants and release targets. Nothing here awaits, locks, reads a clock or
charges a cost: a host calls these functions with its lock held and passes in what is
host-specific (how to take a GP snapshot, how to poll one, how to queue a batch's ``rcu_work``).

* :class:`KfreeRcuCpu` is ``struct kfree_rcu_cpu`` (krcp): channels of blocks (``bulk_head[]``;
  the kernel's two are "slab" and "vmalloc", the app has one per release target), the
  ``rcu_head`` list channel, ``count`` and the page cache (``bkvcache``).
* :class:`KvfreeRcuBulkData` is a block: records and the ``gp_snap`` of its last insert (v6.3).
* :class:`KfreeRcuCpuWork` is a ``krwp``: one of ``KFREE_N_BATCHES`` batches in flight.
* :class:`KvfreePolicy` is every profile fact the mechanism consults, derived once.
* :class:`KvfreeCounters` replaces loose counters; :meth:`KvfreeCounters.statistics` snapshots.
"""

from __future__ import annotations

from array import array
from collections.abc import Callable
from typing import Any, Final, Generic, TypeVar

import attrs

from rcukit.errors import ConfigError
from rcukit.rcu.profiles import REFILL_GFP_5_13, KvfreeProfile

__all__ = [
    "FREE_N_CHANNELS",
    "KFREE_N_BATCHES",
    "KfreeRcuCpu",
    "KfreeRcuCpuWork",
    "KvfreeCounters",
    "KvfreePolicy",
    "KvfreeRcuBulkData",
    "KvfreeStatistics",
]

#: ``KFREE_N_BATCHES`` since v5.6: batches (``krwp``) per krcp (v5.5 had one:
#: :attr:`KvfreePolicy.n_batches`).
KFREE_N_BATCHES: Final = 2
#: ``FREE_N_CHANNELS``: the kernel's block channels (0: slab -> kfree_bulk, 1: vmalloc).
FREE_N_CHANNELS: Final = 2


@attrs.frozen
class KvfreePolicy:
    """The profile's facts as the mechanism consumes them, each decided once, here.

    Built by :meth:`from_profile` when a host starts; both hosts consult this object and never
    the profile itself, so each version difference lives in exactly one place.
    """

    #: ``KVFREE_BULK_MAX_ENTR``: records per block.
    capacity: int
    #: v5.7+: pointer blocks. False (v5.5): every object takes the ``rcu_head`` list, and no
    #: block page is ever allocated or cached.
    blocks: bool
    #: Batches (``krwp``) per krcp: 1 (v5.5 ``head_free``), 2 (v5.6+ ``KFREE_N_BATCHES``).
    n_batches: int
    #: ~v5.7+: the kfree_rcu shrinker is registered.
    shrinker: bool
    #: v5.9+: the head-less ``kvfree_rcu(ptr)`` exists (before it, a call is a usage error).
    headless: bool
    #: v6.1 ``schedule_delayed_monitor_work()``: pull the monitor in once a block's worth waits.
    kick: bool
    #: v6.3: every insert stamps its block; the monitor frees blocks whose GP already passed.
    polled_snapshots: bool
    #: ``need_wait_for_krwp_work()`` (v6.3-rc6): only a wholly free krwp takes a batch.
    need_wait_for_krwp_work: bool
    #: v6.12 ``kvfree_rcu_queue_batch()``: stop after the first queued batch.
    one_batch_per_run: bool
    #: v6.5: a block or list whose snapshot GP has not completed is not freed (WARN_ON_ONCE).
    gp_snap_check: bool
    #: v5.9: the enqueue path calls the variant under ``krcp->lock`` (RT skip already applied).
    alloc_under_lock: bool
    #: v5.11+: a cache miss arms the page-cache refill worker.
    refill_worker: bool
    #: v5.13+: the head-less path drops the lock and allocates with ``refill_gfp``.
    single_arg_direct_alloc: bool
    #: v5.14+: the shrinker counts cached pages, backs the refill off (1 page, after a delay)
    #: and drains the caches.
    shrinker_backoff: bool
    #: v6.1: the refill stops at its first failed allocation (before: tries every page).
    fill_breaks_on_failure: bool
    #: v6.5: the refill counts from the cached pages (before: from 0).
    fill_from_cached: bool
    #: v6.5: with ``rcu_min_cached_objs = 0`` no refill worker is armed.
    no_page_work_without_cache: bool
    #: v6.5: the head-less path re-locks the krcp it dropped; 5.13-6.4 ``krc_this_cpu_lock()``.
    relock_same_krcp: bool
    #: The vmalloc channel is freed with one ``vfree_bulk()`` (the RFC), else one by one.
    vfree_bulk: bool
    #: v5.9: each CPU's cache is filled at boot.
    boot_prefill: bool
    #: ``rcu_min_cached_objs``: pages (blocks) each krcp keeps for reuse.
    min_cached: int
    #: GFP mask of the refill worker and of the v5.13+ direct allocation.
    refill_gfp: int

    @classmethod
    def from_profile(
        cls,
        profile: KvfreeProfile,
        capacity: int,
        *,
        preempt_rt: bool = False,
        defers_to_worker: bool = False,
        min_cached: int | None = None,
        list_channel: bool = False,
    ) -> KvfreePolicy:
        """Derive the policy; ``defers_to_worker`` is the variant's (the page-cache variant).

        The page-cache variant is v5.11's answer grafted onto the profile: its cache holds
        v5.11's five pages and is refilled with the flags the kernel settled on. A profile
        without blocks (v5.5) has no page cache at all, whatever the variant or config say.

        ``list_channel``: the host queues objects on an ``rcu_head`` list and builds
        ``n_batches`` batches per krcp (the simulated kernel). A host that cannot (the
        application domain: its objects carry no ``rcu_head`` and each queue builds
        ``KFREE_N_BATCHES`` batches) gets a ConfigError for a profile that needs it.
        """
        if not list_channel and (not profile.blocks or profile.n_batches != KFREE_N_BATCHES):
            raise ConfigError(
                f"profile {profile.name!r} needs an rcu_head list channel and "
                f"{profile.n_batches} batch(es) per CPU ({profile.description}); an application "
                f"domain queues objects without an rcu_head in blocks, {KFREE_N_BATCHES} "
                "batches per queue: pick a profile from v5.9 on"
            )
        if not profile.blocks:
            min_cached = 0
        default_cached = profile.min_cached_objs
        if defers_to_worker:
            default_cached = max(default_cached, 5)
        refill_gfp = int(profile.refill_gfp)  # an int: IntFlag arithmetic is slow
        if defers_to_worker and not profile.refill_worker:
            refill_gfp = int(REFILL_GFP_5_13)
        return cls(
            capacity=capacity,
            blocks=profile.blocks,
            n_batches=profile.n_batches,
            shrinker=profile.shrinker,
            headless=profile.headless,
            kick=profile.kick,
            polled_snapshots=profile.polled_snapshots,
            need_wait_for_krwp_work=profile.need_wait_for_krwp_work,
            one_batch_per_run=profile.one_batch_per_run,
            gp_snap_check=profile.gp_snap_check,
            alloc_under_lock=profile.alloc_under_lock
            and not (preempt_rt and profile.rt_skips_alloc),
            refill_worker=profile.refill_worker,
            single_arg_direct_alloc=profile.single_arg_direct_alloc,
            shrinker_backoff=profile.shrinker_backoff,
            fill_breaks_on_failure=profile.fill_breaks_on_failure,
            fill_from_cached=profile.fill_from_cached,
            no_page_work_without_cache=profile.no_page_work_without_cache,
            relock_same_krcp=profile.relock_same_krcp,
            vfree_bulk=profile.vfree_bulk,
            boot_prefill=profile.boot_prefill,
            min_cached=default_cached if min_cached is None else min_cached,
            refill_gfp=refill_gfp,
        )

    def kick_now(self, count: int) -> bool:
        """``schedule_delayed_monitor_work()``: the short delay once ``count`` fills a block."""
        return self.kick and count >= self.capacity


class KvfreeRcuBulkData:
    """``struct kvfree_rcu_bulk_data``: a block's records and the snapshot of its last insert."""

    __slots__ = ("gp_snap", "records")

    def __init__(self, records: Any) -> None:
        self.records = records
        self.gp_snap = 0

    def __len__(self) -> int:
        """``nr_records``."""
        return len(self.records)


B = TypeVar("B", bound=KvfreeRcuBulkData)


class KfreeRcuCpuWork(Generic[B]):
    """``struct kfree_rcu_cpu_work`` (krwp): channels detached for one grace period."""

    __slots__ = (
        "bulk_free", "bulk_free_gp_snap", "gp_snap", "head_free", "head_free_gp_snap", "idx"
    )

    def __init__(self, idx: int, nr_channels: int) -> None:
        self.idx = idx
        #: ``bulk_head_free[]``: per channel, the detached blocks.
        self.bulk_free: list[list[B]] = [[] for _ in range(nr_channels)]
        #: Per channel, ``get_state_synchronize_rcu()`` when it was detached. No kernel keeps
        #: this before v6.3's per-block snapshots: rcukit stamps it so the reclaim can tell a
        #: batch freed before a full grace period passed (the pre-fix krwp reuse) on every
        #: profile, at one cookie per channel and batch, without debug objects.
        self.bulk_free_gp_snap: list[int] = [0] * nr_channels
        #: ``head_free``: the detached ``rcu_head`` list.
        self.head_free: array[int] | None = None
        self.head_free_gp_snap = 0
        #: The GP this batch waits for, where the host stamps one (the app domain).
        self.gp_snap = 0

    def busy(self) -> bool:
        """Anything detached here and not yet reclaimed (``need_wait_for_krwp_work``)."""
        return any(self.bulk_free) or self.head_free is not None


W = TypeVar("W", bound=KfreeRcuCpuWork[Any])
#: What the cache holds: spare block pages (the sim's addresses) or emptied blocks (the app's).
C = TypeVar("C")


class KfreeRcuCpu(Generic[B, W, C]):
    """``struct kfree_rcu_cpu`` without its lock and work items (those are the host's)."""

    def __init__(self, nr_channels: int, krw: list[W]) -> None:
        #: ``bulk_head[]``: per channel, blocks oldest first (the current block last).
        self.bulk: list[list[B]] = [[] for _ in range(nr_channels)]
        #: ``head``: the ``rcu_head`` list channel (objects' addresses).
        self.head: array[int] | None = None
        self.head_gp_snap = 0
        #: ``count``: objects queued since the last batch was detached.
        self.count = 0
        #: ``bkvcache``: spare block pages (sim) or emptied blocks (app).
        self.cache: list[C] = []
        self.krw = krw

    def krc_count(self) -> int:
        """``krc_count()``: objects in this krcp's channels, not yet handed to a batch."""
        n = len(self.head) if self.head is not None else 0
        for chan in self.bulk:
            for b in chan:
                n += len(b)
        return n

    def need_offload_krc(self) -> bool:
        """``need_offload_krc()``: is there a channel to detach?"""
        return any(self.bulk) or self.head is not None

    def get_cached_bnode(self) -> C | None:
        """``get_cached_bnode()``: a spare block page, if the cache holds one."""
        return self.cache.pop() if self.cache else None

    def put_cached_bnode(self, bnode: C, min_cached: int) -> bool:
        """``put_cached_bnode()``: keep ``bnode`` if the cache is short; False: free it."""
        if len(self.cache) < min_cached:
            self.cache.append(bnode)
            return True
        return False

    def kvfree_rcu_drain_ready(
        self, poll: Callable[[int], bool]
    ) -> tuple[list[tuple[int, list[B]]], array[int] | None]:
        """``kvfree_rcu_drain_ready()`` (v6.3): detach each channel's leading blocks whose
        snapshot GP has completed (stop at the first that has not), and the list channel if its
        snapshot has. Returns ``[(channel, blocks)]`` and the list, for the host to free now."""
        out: list[tuple[int, list[B]]] = []
        for idx, chan in enumerate(self.bulk):
            n = 0
            while n < len(chan) and poll(chan[n].gp_snap):
                n += 1
            if n:
                nodes = chan[:n]
                del chan[:n]
                out.append((idx, nodes))
        head = None
        if self.head is not None and poll(self.head_gp_snap):
            head = self.head
            self.head = None
        return out, head

    def kvfree_rcu_queue_batch(
        self,
        policy: KvfreePolicy,
        counters: KvfreeCounters,
        snapshot: Callable[[], int],
        queue_rcu_work: Callable[[W], bool],
    ) -> bool:
        """``kvfree_rcu_queue_batch()``: detach channels into free krwp slots and queue each.

        Before ``need_wait_for_krwp_work()`` a channel joins any krwp whose same channel is
        free, even one whose batch waits for an older grace period (``queue_rcu_work`` of a
        pending work asks for no new GP: the pre-fix use-after-free). With it, only a wholly
        free krwp takes a batch, which then holds every channel, so the v6.12 ``break``
        (``one_batch_per_run``) changes nothing observable.

        ``snapshot`` stamps the list channel (``get_state_synchronize_rcu``); the host's
        ``queue_rcu_work(krwp)`` asks for the batch's grace period and says whether it queued.
        """
        queued = False
        for krwp in self.krw:
            if policy.need_wait_for_krwp_work and krwp.busy():
                continue
            if not self.need_offload_krc():
                break
            moved = False
            bulk = self.bulk
            free = krwp.bulk_free
            while len(free) < len(bulk):
                free.append([])
                krwp.bulk_free_gp_snap.append(0)
            for j, chan in enumerate(bulk):
                if chan and not free[j]:
                    free[j] = chan
                    krwp.bulk_free_gp_snap[j] = snapshot()
                    bulk[j] = []
                    moved = True
            if krwp.head_free is None and self.head is not None:
                krwp.head_free = self.head
                krwp.head_free_gp_snap = snapshot()
                self.head = None
                moved = True
            if moved:
                self.count = 0
                if queue_rcu_work(krwp):
                    counters.batches_queued += 1
                    queued = True
                if policy.one_batch_per_run:
                    break
        return queued


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
    #: Of those, the allocator-core variant's calls under ``krcp->lock`` (the RFC's question;
    #: the rest are the page-cache worker's refills and the v5.13+ lock-dropped allocations).
    block_alloc_in_lock: int
    block_alloc_in_lock_failures: int
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


@attrs.define(slots=True, eq=False)
class KvfreeCounters:
    """Every count kvfree_rcu() keeps, live; :meth:`statistics` takes a frozen snapshot.

    A host's inline path may count a call in ``fast_single``/``fast_double`` only (one bump per
    call); ``pending`` then excludes those calls and :attr:`pending_total` adds them back.
    """

    #: Calls that found room in the current block, by form (the sim's inline path).
    fast_single: int = 0
    fast_double: int = 0
    #: Calls that took the full path, and the head-less ones among them.
    slow_calls: int = 0
    slow_single: int = 0
    queued_vmalloc: int = 0
    block_alloc_attempts: int = 0
    block_alloc_failures: int = 0
    block_alloc_in_lock: int = 0
    block_alloc_in_lock_failures: int = 0
    blocks_from_cache: int = 0
    blocks_in_use: int = 0
    fallback_rcu_head: int = 0
    #: Head-less calls that waited a GP and freed inline (``kvfree_rcu_mightsleep`` at the cap).
    fallback_synchronize: int = 0
    batches_queued: int = 0
    #: Batches whose GP was requested and whose objects are not all released (app domain).
    batches_in_flight: int = 0
    grace_periods_waited: int = 0
    freed_early_polled: int = 0
    objects_freed: int = 0
    #: Objects queued and not yet freed, less those counted only in ``fast_*``.
    pending: int = 0
    pending_peak: int = 0
    pages_peak: int = 0
    bulk_calls: int = 0
    records_per_block: dict[int, int] = attrs.Factory(dict)
    latency: dict[int, int] = attrs.Factory(dict)
    gp_violations: int = 0
    #: Pages the shrinker took out of the caches (``drain_page_cache``).
    cache_pages_drained: int = 0
    #: Slots granted to a host's fast path and not yet used (the app's backpressure grants).
    reserved: int = 0

    @property
    def fast_calls(self) -> int:
        return self.fast_single + self.fast_double

    @property
    def calls_single(self) -> int:
        return self.fast_single + self.slow_single

    @property
    def pending_total(self) -> int:
        return self.pending + self.fast_single + self.fast_double

    def note_freed(self, n: int) -> None:
        """``n`` queued objects were freed (pending only falls here, so its peak is seen)."""
        pending = self.pending + self.fast_single + self.fast_double
        if pending > self.pending_peak:
            self.pending_peak = pending
        self.objects_freed += n
        self.pending -= n

    def note_block(self) -> None:
        """A block was attached to a channel."""
        self.blocks_in_use += 1
        if self.blocks_in_use > self.pages_peak:
            self.pages_peak = self.blocks_in_use

    def statistics(self, *, cached_pages: int, fast_ns: int) -> KvfreeStatistics:
        """A frozen snapshot; ``fast_ns`` is the latency the host charges an inline call."""
        fast = self.fast_calls
        calls = fast + self.slow_calls
        latency = dict(self.latency)
        if fast:
            latency[fast_ns] = latency.get(fast_ns, 0) + fast
        # Every call queued its object somewhere, except head-less calls that freed inline.
        queued = calls - self.fallback_synchronize
        pending = self.pending_total
        return KvfreeStatistics(
            calls=calls,
            calls_single=self.calls_single,
            calls_double=calls - self.calls_single,
            queued_slab=queued - self.queued_vmalloc - self.fallback_rcu_head,
            queued_vmalloc=self.queued_vmalloc,
            queued_list=self.fallback_rcu_head,
            block_alloc_attempts=self.block_alloc_attempts,
            block_alloc_failures=self.block_alloc_failures,
            block_alloc_in_lock=self.block_alloc_in_lock,
            block_alloc_in_lock_failures=self.block_alloc_in_lock_failures,
            blocks_from_cache=self.blocks_from_cache,
            blocks_in_use=self.blocks_in_use,
            cached_pages=cached_pages,
            fallback_rcu_head=self.fallback_rcu_head,
            fallback_synchronize=self.fallback_synchronize,
            batches_queued=self.batches_queued,
            grace_periods_waited=self.grace_periods_waited,
            freed_early_polled=self.freed_early_polled,
            objects_freed=self.objects_freed,
            pending=pending,
            pending_peak=max(self.pending_peak, pending),
            pages_peak=self.pages_peak,
            bulk_calls=self.bulk_calls,
            records_per_block=dict(sorted(self.records_per_block.items())),
            latency_ns=dict(sorted(latency.items())),
            gp_violations=self.gp_violations,
        )
