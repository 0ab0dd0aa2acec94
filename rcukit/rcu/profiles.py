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

from rcukit.errors import ConfigError
from rcukit.mm.gfp import GFP, GFP_KERNEL, GFP_NOWAIT
from rcukit.mm.versions import MM_5_8, MM_6_0, MmVersion

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
    #: ``sizeof(struct kvfree_rcu_bulk_data)`` without the records: 16 (5.9-6.2), 32 (6.3);
    #: 0 where there is no block (v5.5).
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
    #: v5.14+: the shrinker sets ``backoff_page_cache_fill`` (refill delayed by 5 s, 1 page).
    shrinker_backoff: bool
    #: v6.3: per-block polled GP snapshots; the monitor frees blocks whose GP already passed.
    polled_snapshots: bool
    #: v6.3: queue at most one batch per monitor run; a krwp is reused only when all its
    #: channels are free (``need_wait_for_krwp_work``).
    one_batch_per_run: bool
    #: The vmalloc channel is freed with one ``vfree_bulk()`` instead of a ``vfree()`` loop.
    vfree_bulk: bool

    def drain_jiffies(self, hz: int) -> int:
        return max(1, hz * self.drain_hz_num // self.drain_hz_den)

    def block_capacity(self, page_size: int, pointer_size: int, header: str) -> int:
        """``KVFREE_BULK_MAX_ENTR``; the ``rfc`` header is the RFC's PAGE_SIZE / sizeof(void *).

        The header is two longs (five from v6.3), so it scales with the pointer size."""
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
    polled_snapshots=False, one_batch_per_run=False,
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
    "shrinker back-off of the page-cache refill",
    mm=MM_6_0,
    drain_hz_num=5, drain_hz_den=1, kick=True,
    shrinker_backoff=True,
)
_V6_3 = attrs.evolve(
    _V6_1,
    name="v6.3",
    description="v6.3: per-block polled GP snapshots, blocks whose GP already passed are "
    "freed by the monitor without a new GP; one batch per monitor run",
    header_bytes=32,
    polled_snapshots=True, one_batch_per_run=True,
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
    return f"{name!r} is not a kvfree_rcu profile; allowed: {', '.join(PROFILES)}"
