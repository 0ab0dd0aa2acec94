"""kvfree_rcu() version profiles: the knobs that changed between kernel releases.

Each profile is a documented set of switches taken from kernel.md section 1 (the timeline and
the per-version code walk-throughs). The allocator-core *variant* is an independent knob: a
profile says *whether and where* the enqueue path allocates a block page, the variant says
*how* it does so when it does.

``v5.5`` is where it all began (a35d16905efc, "rcu: Add basic support for kfree_rcu()
batching"): no pointer blocks, every object linked through its own ``rcu_head`` on a per-CPU
list, one batch in flight, so that rcuscale's batched-vs-unbatched runs of 2019 have both sides.

``rfc`` is the RFC's world: the v5.9 mechanism with one code path for RT and !RT (the patch's
stated aim: "make the kfree_rcu() code common for RT and regular kernel"), so the variant is
called under ``krcp->lock`` on every build and the builds can be compared. ``v5.9`` itself
skipped the in-lock allocation on PREEMPT_RT.
"""

from __future__ import annotations

from typing import Any, Final

import attrs

from rcukit.errors import ConfigError, did_you_mean
from rcukit.mm.gfp import GFP, GFP_KERNEL, GFP_NOWAIT
from rcukit.mm.versions import MM_5_8, MM_6_0, MM_6_2, MM_6_5, MmVersion

#: ``GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN``: v5.13+ head-less path and refill.
REFILL_GFP_5_13 = GFP_KERNEL | GFP.NORETRY | GFP.NOMEMALLOC | GFP.NOWARN
#: v5.11's ``fill_page_cache_func`` mask.
REFILL_GFP_5_11 = GFP_KERNEL | GFP.NOWARN
#: v5.9's boot-time prefill mask.
PREFILL_GFP_5_9 = GFP_NOWAIT | GFP.NOWARN


@attrs.frozen
class KvfreeProfile:
    """The mechanism of one kernel version (see the module docstring)."""

    name: str
    description: str
    #: The page allocator of the same kernel (pcp protection, boosted-watermark wake): a
    #: profile names a whole kernel version, mm included (kernel.md 8.1, 8.2).
    mm: MmVersion
    #: v5.7+: page-sized pointer blocks (``kfree_rcu_bulk_data``); v5.5 has only the per-CPU
    #: ``rcu_head`` list (``krcp->head``), so every object takes it and no block page exists.
    blocks: bool
    #: ``KFREE_N_BATCHES``: batches in flight per CPU. v5.5 has one (``krcp->head_free``, and
    #: ``queue_kfree_rcu_work()`` refuses while it is busy); v5.6 made it two (``krw_arr[]``).
    n_batches: int
    #: A shrinker (``kfree_rcu_shrink_count/scan``, ~v5.7) pulls the monitors in under pressure.
    shrinker: bool
    #: v5.9: the head-less ``kvfree_rcu(ptr)`` ("rcu/tree: Support reclaim for head-less
    #: object"); before it only ``kfree_rcu(ptr, rhf)`` existed.
    headless: bool
    #: ``sizeof(struct kvfree_rcu_bulk_data)`` without the records, 64-bit: 16 (5.9-6.2:
    #: ``nr_records``, ``next``), 32 (6.3-6.4: ``list_head``, ``unsigned long gp_snap``,
    #: ``nr_records``), 40 (6.5+: ``gp_snap`` is a two-long ``rcu_gp_oldstate``); 0 where there
    #: is no block (v5.5).
    header_bytes: int
    #: ``KFREE_DRAIN_JIFFIES`` as a fraction of HZ: HZ/50 before v6.1, 5*HZ after.
    drain_hz_num: int
    drain_hz_den: int
    #: v6.1: pull the monitor in to 1 jiffy once a block's worth is queued.
    kick: bool
    #: v5.9: the enqueue path calls the allocator under ``krcp->lock`` on a cache miss.
    alloc_under_lock: bool
    #: v5.9 returned early on PREEMPT_RT instead of allocating under the raw lock.
    rt_skips_alloc: bool
    #: ``rcu_min_cached_objs`` default: 2 (5.9), 5 (5.11+).
    min_cached_objs: int
    #: v5.9 prefilled the per-CPU cache at boot; removed in v5.11.
    boot_prefill: bool
    #: v5.11+: a cache miss arms the page-cache refill worker (hrtimer -> system_highpri_wq).
    refill_worker: bool
    #: GFP mask of the refill worker.
    refill_gfp: int
    #: v5.13+: the single-argument path drops the lock and allocates with REFILL_GFP_5_13.
    single_arg_direct_alloc: bool
    #: v5.14 ("kvfree_rcu: Release a page cache under memory pressure", d0bfa8b3c411): the
    #: shrinker's count adds the cached pages (``nr_bkv_objs``) and sets
    #: ``backoff_page_cache_fill`` (refill delayed by 5 s, 1 page), its scan drains the caches
    #: (``drain_page_cache()``). Before, the count is ``krcp->count`` alone.
    shrinker_backoff: bool
    #: v6.3: per-block polled GP snapshots; the monitor frees blocks whose GP already passed.
    polled_snapshots: bool
    #: ``need_wait_for_krwp_work()`` ("rcu/kvfree: Avoid freeing new kfree_rcu() memory after
    #: old grace period", 5da7cb193db3, mainline in v6.3-rc6, backported to 5.10.y-6.2.y): a
    #: krwp takes a batch only when all its channels are free. Before it, the monitor attached a
    #: new channel to a krwp whose other channel still waited for an older grace period, and
    #: ``queue_rcu_work()`` (already pending) did not ask for a new one: the new objects were
    #: freed after the old GP.
    need_wait_for_krwp_work: bool
    #: v6.12 ``kvfree_rcu_queue_batch()`` (2b55d6a42d14, with ``kvfree_rcu_barrier()``) stops
    #: after the first queued batch and returns whether it queued; 6.3-6.11's
    #: ``kfree_rcu_monitor()`` loop went on to the next krwp (which, with
    #: ``need_wait_for_krwp_work``, finds nothing left to detach).
    one_batch_per_run: bool
    #: v6.5 ("rcu/kvfree: Add debug to check grace periods", cdfa0f6fa6b7; "Add debug check for
    #: GP complete for kfree_rcu_cpu list", f32276a37652): ``gp_snap`` becomes a
    #: ``struct rcu_gp_oldstate`` and ``kvfree_rcu_bulk()``/``kfree_rcu_work()`` free a block or
    #: the list only if its snapshot's GP completed (``WARN_ON_ONCE`` otherwise, and the objects
    #: are left alone).
    gp_snap_check: bool
    #: v6.1 ("rcu/kvfree: Back off upon fill_page_cache_func() allocation failure",
    #: 093590c16b44, Michal Hocko): the refill stops at the first failed allocation; before,
    #: it tried ``rcu_min_cached_objs`` times whatever failed.
    fill_breaks_on_failure: bool
    #: v6.5 ("rcu/kvfree: Make fill page cache start from krcp->nr_bkv_objs", 60888b77a06e):
    #: the refill counts from the pages already cached; before, from 0 (a full cache refuses
    #: the page in ``put_cached_bnode()``, which is freed, and the loop stops).
    fill_from_cached: bool
    #: v6.5 ("rcu/kvfree: Do not run a page work if a cache is disabled", 021a5ff84743; "Make
    #: drain_page_cache() take early return if cache is disabled", 6b706e5603c4):
    #: ``rcu_min_cached_objs = 0`` arms no refill worker at all.
    no_page_work_without_cache: bool
    #: v6.5 ("rcu/kvfree: Use consistent krcp when growing kfree_rcu() page cache",
    #: 309a43165077): the head-less path re-takes the lock of the krcp it dropped
    #: (``raw_spin_lock_irqsave(&(*krcp)->lock)``); 5.13-6.4 re-took ``krc_this_cpu_lock()``,
    #: the krcp of whatever CPU the task runs on after the allocation slept.
    relock_same_krcp: bool
    #: The vmalloc channel is freed with one ``vfree_bulk()`` instead of a ``vfree()`` loop.
    vfree_bulk: bool

    def drain_jiffies(self, hz: int) -> int:
        return max(1, hz * self.drain_hz_num // self.drain_hz_den)

    def block_capacity(self, page_size: int, pointer_size: int, header: str) -> int:
        """``KVFREE_BULK_MAX_ENTR``; the ``rfc`` header is the RFC's ``PAGE_SIZE / sizeof(void *)``.

        The header is two longs (four from v6.3, five from v6.5), so it scales with the pointer
        size."""
        hdr = 0 if header == "rfc" else self.header_bytes * pointer_size // 8
        return (page_size - hdr) // pointer_size


# kernel/rcu/tree.c at v5.5 (a35d16905efc): struct kfree_rcu_cpu is {rcu_work, head, head_free,
# lock, monitor_work, monitor_todo, initialized}. kfree_call_rcu() pushes the object's rcu_head on
# ->head and arms monitor_work for KFREE_DRAIN_JIFFIES (HZ / 50) unless monitor_todo says it is
# armed; kfree_rcu_monitor() -> queue_kfree_rcu_work() moves ->head to ->head_free and calls
# queue_rcu_work(system_wq), or, if ->head_free is still busy, re-arms itself; kfree_rcu_work()
# walks ->head_free freeing each object. No blocks, no allocation, no page cache, no shrinker.
_V5_5 = KvfreeProfile(
    name="v5.5",
    description="v5.5: the first kfree_rcu() batching: every object on the per-CPU rcu_head "
    "list, one batch in flight (head_free), drain every HZ/50, no blocks or page cache",
    mm=MM_5_8,
    blocks=False, n_batches=1, shrinker=False, headless=False,
    header_bytes=0,
    drain_hz_num=1, drain_hz_den=50, kick=False,
    alloc_under_lock=False, rt_skips_alloc=False,
    min_cached_objs=0, boot_prefill=False, refill_worker=False, refill_gfp=0,
    single_arg_direct_alloc=False,
    shrinker_backoff=False,
    polled_snapshots=False, need_wait_for_krwp_work=False, one_batch_per_run=False,
    gp_snap_check=False,
    fill_breaks_on_failure=False, fill_from_cached=False, no_page_work_without_cache=False,
    relock_same_krcp=False,
    vfree_bulk=False,
)

# Each release below is the one before it with only what that release changed; a line holds the
# knobs of one mechanism (drain timing, enqueue allocation, the page cache, polled snapshots).
# v5.9 gathers what v5.6 (two batches), v5.7 (pointer blocks, the shrinker) and v5.9 (blocks
# allocated under the lock, the boot-filled cache) added.
_V59 = attrs.evolve(
    _V5_5,
    name="v5.9",
    description="v5.9: drain every HZ/50, GFP_NOWAIT|__GFP_NOWARN page under krcp->lock "
    "(skipped on PREEMPT_RT), 2 cached pages prefilled at boot",
    blocks=True, n_batches=2, shrinker=True, headless=True,
    header_bytes=16,
    alloc_under_lock=True, rt_skips_alloc=True,
    min_cached_objs=2, boot_prefill=True, refill_gfp=PREFILL_GFP_5_9,
)
_V5_11 = attrs.evolve(
    _V59,
    name="v5.11",
    description="v5.11: no allocation under the lock; 5 cached pages per CPU refilled by "
    "hrtimer -> system_highpri_wq with GFP_KERNEL|__GFP_NOWARN",
    alloc_under_lock=False,
    min_cached_objs=5, boot_prefill=False, refill_worker=True, refill_gfp=REFILL_GFP_5_11,
)
_V5_13 = attrs.evolve(
    _V5_11,
    name="v5.13",
    description="v5.13: single-argument kvfree_rcu() drops the lock and allocates with "
    "GFP_KERNEL|__GFP_NORETRY|__GFP_NOMEMALLOC|__GFP_NOWARN",
    refill_gfp=REFILL_GFP_5_13,
    single_arg_direct_alloc=True,
)
_V6_1 = attrs.evolve(
    _V5_13,
    name="v6.1",
    description="v6.1: 5*HZ drain with a 1-jiffy kick once a block's worth is queued; "
    "shrinker back-off of the page-cache refill, which stops at its first failure",
    mm=MM_6_0,
    drain_hz_num=5, drain_hz_den=1, kick=True,
    shrinker_backoff=True,
    fill_breaks_on_failure=True,
)
# v6.3 as tagged: the krwp fix (5da7cb193db3) went into mainline for v6.3-rc6 (between the
# 'platform-drivers-x86-v6.3-5' and 'sound-6.3-rc6' merges), so the release has it.
_V6_3 = attrs.evolve(
    _V6_1,
    name="v6.3",
    description="v6.3: per-block polled GP snapshots, blocks whose GP already passed are "
    "freed by the monitor without a new GP; a krwp takes a batch only when wholly free "
    "(need_wait_for_krwp_work, since 6.3-rc6)",
    mm=MM_6_2,
    header_bytes=32,
    polled_snapshots=True, need_wait_for_krwp_work=True,
)
# v6.4 changed nothing in kvfree_rcu (its rcu_gp_oldstate snapshots are v6.5's series): the
# profile is v6.3's mechanism on the last allocator whose boosted watermark wakes kswapd
# whatever the gfp.
_V6_4 = attrs.evolve(
    _V6_3,
    name="v6.4",
    description="v6.4: kvfree_rcu as in v6.3 (unsigned long gp_snap, 508 records a block); "
    "the last page allocator whose rmqueue() wakes kswapd for a boosted watermark on any gfp",
)
_V6_5 = attrs.evolve(
    _V6_4,
    name="v6.5",
    description="v6.5: rcu_gp_oldstate snapshots (507 records a block) checked before each "
    "free; the head-less path re-locks the same krcp; the refill counts from the cached pages; "
    "rmqueue() wakes kswapd only with __GFP_KSWAPD_RECLAIM",
    mm=MM_6_5,
    header_bytes=40,
    gp_snap_check=True,
    fill_from_cached=True, no_page_work_without_cache=True,
    relock_same_krcp=True,
)
_V6_12 = attrs.evolve(
    _V6_5,
    name="v6.12",
    description="v6.12: kvfree_rcu_barrier() (kmem_cache_destroy() waits for kvfree_rcu "
    "objects); kvfree_rcu_queue_batch() queues at most one batch per monitor run",
    one_batch_per_run=True,
)
_V6_15 = attrs.evolve(
    _V6_12,
    name="v6.15",
    description="v6.15: kvfree_rcu in mm/slab_common.c (since 6.14), same mechanism; "
    "try_alloc_pages() (alloc_pages_nolock() from 6.16) exists but kvfree_rcu never calls it: "
    "the nolock variant grafts it on",
)

#: Oldest first (the RFC, 2020-08 against 5.8-rc3, sits just before v5.9).
PROFILES: dict[str, KvfreeProfile] = {
    "v5.5": _V5_5,
    "rfc": attrs.evolve(
        _V59,
        name="rfc",
        description="the RFC's world: v5.9 with the block allocator called under krcp->lock "
        "on every build (RT included) and vmalloc blocks freed with vfree_bulk()",
        rt_skips_alloc=False,
        vfree_bulk=True,
    ),
    "v5.9": _V59,
    "v5.11": _V5_11,
    "v5.13": _V5_13,
    "v6.1": _V6_1,
    "v6.3": _V6_3,
    "v6.4": _V6_4,
    "v6.5": _V6_5,
    "v6.12": _V6_12,
    "v6.15": _V6_15,
}


#: The profile each entry point runs when none is named, in one place (the README's "Version
#: profiles" table): a booted kernel models v5.9, the release the RFC was written against;
#: ``compare`` replays the RFC's world; ``rcuscale`` is run the way its published v6.1 runs were;
#: an application domain gets the newest mechanism (per-block polled snapshots). ``v5.5`` is
#: nobody's default: it is named (``--profile v5.5``) for the batched side of 2019's rcuscale runs.
DEFAULT_PROFILES: Final = {
    "kernel": "v5.9",
    "compare": "rfc",
    "rcuscale": "v6.1",
    "torture": "v5.9",
    "app": "v6.3",
}


def get_profile(name: str) -> KvfreeProfile:
    """The profile called ``name``; the one place an unknown name is reported."""
    try:
        return PROFILES[name]
    except (KeyError, TypeError):
        raise ConfigError(_unknown(name)) from None


def profile_validator(inst: object, att: attrs.Attribute[Any], value: object) -> None:
    """attrs validator for a ``profile`` field: configs are where a profile name is checked."""
    if not isinstance(value, str) or value not in PROFILES:
        raise ConfigError(f"{att.name} = {_unknown(value)}")


def _unknown(name: object) -> str:
    return (
        f"{name!r} is not a kvfree_rcu profile{did_you_mean(name, PROFILES)}; "
        f"allowed: {', '.join(PROFILES)}"
    )
